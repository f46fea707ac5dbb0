"""A coverage-guided (atheris / libFuzzer) target for the decoders of the peer port
(raft/framing.py, raft/messages.py) and of the binary client port (common/binwire.py).

Why beside the hypothesis fuzzers (test_wire_decoders.py): those draw inputs from shapes
we thought of; libFuzzer watches which branches each input reaches and mutates towards
the ones not reached yet, so it finds the shapes we did not think of. The property is the
same: every decoder returns a value or raises its own documented refusal (FrameError,
HandshakeRejected, InvalidMessage, BadFrame), which the ports turn into a closed
connection; anything else is a crash, and libFuzzer stops and saves the input.

Run it (the `fuzz` extra: `pip install 'raftq[fuzz]'`):

    make fuzz                                   # 60 s; FUZZ_SECONDS=600 make fuzz
    python -m tests.fuzz.atheris_frames -max_total_time=60 [CORPUS_DIR ...]
    python -m tests.fuzz.atheris_frames crash-<sha1>   # replay one saved input

Without a corpus directory it starts from seeds made here (one valid input per target);
a crashing input is saved under $TMPDIR/raftq-fuzz-artifacts/ unless -artifact_prefix says
otherwise.
The input's first byte picks the target; the rest is its bytes.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from common import binwire
    from raft import framing
    from raft.errors import InvalidMessage
    from raft.messages import (
        ConfState,
        Entry,
        Message,
        MessageType,
        decode_conf,
        decode_message,
        encode_conf,
        encode_message,
    )

REFUSALS = (framing.FrameError, framing.HandshakeRejected, InvalidMessage, binwire.BadFrame)
MAX_FRAME_BYTES = 1 << 16
SECRET = b"fuzzing-secret-0123456789"
KEY = framing.session_key(SECRET, b"c" * framing.NONCE_BYTES, b"n" * framing.NONCE_BYTES)
CHALLENGE = b"c" * framing.NONCE_BYTES


def _refused(decode: Callable[[], object]) -> object | None:
    """What `decode` returns, or None if it refused the input the documented way."""
    try:
        return decode()
    except REFUSALS:
        return None


def _message(body: bytes) -> None:
    msg = _refused(lambda: decode_message(body))
    if isinstance(msg, Message):  # what it accepts, it re-encodes to the same message
        assert decode_message(encode_message(msg)) == msg


def _frame_stream(data: bytes) -> None:
    """Peer frames cut at every `step` bytes give the frames the whole stream gives."""
    step = 1 + (data[0] if data else 0)
    whole = _refused(lambda: framing.FrameDecoder(MAX_FRAME_BYTES).feed(data[1:]))
    pieces = framing.FrameDecoder(MAX_FRAME_BYTES)
    got: list[bytes] = []
    try:
        for at in range(1, len(data), step):
            got.extend(pieces.feed(data[at : at + step]))
    except framing.FrameError:
        assert whole is None
        return
    assert whole is not None and got == whole
    for body in got:
        if body:  # an empty frame is a keep-alive
            _message(body)


def _sealed(data: bytes) -> None:
    """A seal under the connection's key (so the tag holds) around fuzzed inner bytes, and
    the fuzzed bytes as a seal of their own (whose tag must fail)."""
    sealed = framing.FrameSealer(KEY, MAX_FRAME_BYTES).seal(data)[framing.FRAME_HEADER_BYTES :]
    for body in _refused(lambda: framing.FrameOpener(KEY, MAX_FRAME_BYTES).open(sealed)) or ():
        if body:
            _message(body)
    assert _refused(lambda: framing.FrameOpener(KEY, MAX_FRAME_BYTES).open(data)) is None


def _handshake(data: bytes) -> None:
    secret = SECRET if data[:1] == b"\x01" else None
    _refused(
        lambda: framing.decode_handshake(
            data[1:], cluster="fuzz", our_id=1, secret=secret, challenge=CHALLENGE
        )
    )
    _refused(lambda: framing.decode_challenge(data))


def _conf(data: bytes) -> None:
    conf = _refused(lambda: decode_conf(data))
    if isinstance(conf, ConfState):
        assert decode_conf(encode_conf(conf)) == conf


def _binary_request(data: bytes) -> None:
    if len(data) >= binwire.FRAME_HEADER_BYTES:  # the port reads exactly the header first
        _refused(lambda: binwire.frame_length(data[:4], MAX_FRAME_BYTES))
    request = _refused(lambda: binwire.decode_request(data))
    if isinstance(request, tuple):
        assert binwire.decode_request(binwire.encode_request(*request)[4:]) == request


def _binary_answer(data: bytes) -> None:
    _refused(lambda: binwire.decode_answer(data))


TARGETS: tuple[Callable[[bytes], None], ...] = (
    _frame_stream,
    _sealed,
    _handshake,
    _conf,
    _binary_request,
    _binary_answer,
    _message,
)


def fuzz_one_input(data: bytes) -> None:
    """libFuzzer's entry point: the first byte picks the target."""
    if data:
        TARGETS[data[0] % len(TARGETS)](data[1:])


def seeds() -> list[bytes]:
    """One valid input per target, so a run starts past the outer shapes."""
    msg = Message(
        type=MessageType.APP,
        to=1,
        frm=2,
        term=3,
        log_term=3,
        index=4,
        entries=(Entry(5, 3, data=b"x"),),
        commit=4,
    )
    body = encode_message(msg)
    handshake = framing.encode_handshake("fuzz", 2, 1, SECRET, challenge=CHALLENGE, nonce=CHALLENGE)
    request = binwire.encode_request(7, "POST", "/v1/queues/q/messages", b"\x80")
    answer = binwire.encode_answer(7, 200, {"Retry-After": "1"}, b"\xc0")
    return [
        bytes([0, 3]) + framing.frame(body) + framing.frame(b""),
        bytes([1]) + framing.frame(body),
        bytes([2, 1]) + handshake,
        bytes([3]) + encode_conf(ConfState(voters=(1, 2, 3))),
        bytes([4]) + request[4:],
        bytes([5]) + answer[4:],
        bytes([6]) + body,
    ]


def main(argv: list[str]) -> None:
    if not any(not a.startswith("-") for a in argv[1:]):  # no corpus or input given
        corpus = Path(tempfile.mkdtemp(prefix="raftq-fuzz-"))
        for i, seed in enumerate(seeds()):
            (corpus / f"seed-{i}").write_bytes(seed)
        argv = [*argv, str(corpus)]
    if not any(a.startswith("-artifact_prefix=") for a in argv):
        # a crashing input goes there (the path is printed), not into the working tree
        artifacts = Path(tempfile.gettempdir()) / "raftq-fuzz-artifacts"
        artifacts.mkdir(exist_ok=True)
        argv = [*argv, f"-artifact_prefix={artifacts}/"]
    atheris.Setup(argv, fuzz_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)

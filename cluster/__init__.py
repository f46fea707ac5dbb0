"""raftq cluster tooling: the client library (sync and async), the CLI, the local launcher.

    from cluster import Client

    with Client("http://127.0.0.1:7001,http://127.0.0.1:7002") as client:
        q = client.queue("tasks")
        q.create()
        q.send({"image_id": 123})
        msg = q.receive(wait_s=5)

This package talks to nodes over HTTP only; it never imports `node` or `raft`.
"""

from cluster.client import AsyncClient, AsyncQueue
from cluster.consumer import Consumer, ConsumerStats
from cluster.errors import (
    BadRequest,
    ClusterUnavailable,
    Conflict,
    Forbidden,
    InsufficientStorage,
    NotFound,
    RaftqError,
    ServerError,
    TooLarge,
    Unauthorized,
)
from cluster.exchanges import AsyncExchange, Exchange, PublishMessage, PublishResult
from cluster.launcher import ClusterStartError, LeaderInfo, LocalCluster, free_ports
from cluster.message import AckResult, Message, OutgoingMessage, SendResult
from cluster.rpc import RequestTimeout
from cluster.sync_client import Client, Queue, Topic
from cluster.topics import AsyncTopic, FetchResult, GroupSubscriber, TopicRecord
from cluster.transactions import (
    AsyncTransaction,
    Transaction,
    TransactionAborted,
    TxnResult,
    consume_exactly_once,
)

__all__ = [
    "AckResult",
    "AsyncClient",
    "AsyncExchange",
    "AsyncQueue",
    "AsyncTopic",
    "AsyncTransaction",
    "BadRequest",
    "Client",
    "ClusterStartError",
    "ClusterUnavailable",
    "Conflict",
    "Consumer",
    "ConsumerStats",
    "Exchange",
    "FetchResult",
    "Forbidden",
    "GroupSubscriber",
    "InsufficientStorage",
    "LeaderInfo",
    "LocalCluster",
    "Message",
    "NotFound",
    "OutgoingMessage",
    "PublishMessage",
    "PublishResult",
    "Queue",
    "RaftqError",
    "RequestTimeout",
    "SendResult",
    "ServerError",
    "TooLarge",
    "Topic",
    "TopicRecord",
    "Transaction",
    "TransactionAborted",
    "TxnResult",
    "Unauthorized",
    "consume_exactly_once",
    "free_ports",
]

"""The queue state machine's data models, one module per model, all stored in LMDB."""

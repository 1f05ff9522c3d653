"""Asynchronous side work: the outbox relay, the event stream's
consumers (order-confirmation mail, audit log), retries and dead letters. Nothing here
runs in a request's path: a purchase only writes its outbox row in its own transaction.
See docs/worker.md."""

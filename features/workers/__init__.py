"""Several HTTP worker processes on one port, sharing one pair of user queues."""

"""MNIST loading and federated partitioning."""

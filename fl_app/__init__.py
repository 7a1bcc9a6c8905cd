"""Flower app: federated MNIST with a custom FedAvg."""

"""greeter: a reference gRPC Greeter service and load tester."""

__version__ = "0.1.0"

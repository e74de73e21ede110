"""Generated gRPC stubs for proto/snakepit/bridge/v1/bridge.proto (do not edit)."""

"""The gRPC face (proto/surge/v1/surge.proto, docs/api.md): grpc.aio's server in every
server process, beside the HTTP engine, calling the very handlers HTTP routes to.
"""

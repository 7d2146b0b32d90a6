"""Test helpers shared by the test suite and benchmarks: tiny real-architecture models, a fake OpenAI server.

Nothing here downloads anything; heavy imports (torch, transformers) happen inside the builder functions.
"""

"""The proxy data path: client protocol, exchanges, upstream pool, parsing."""

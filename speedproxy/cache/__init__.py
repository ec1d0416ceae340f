"""The HTTP cache: RFC 9111 policy, memory and disk tiers."""

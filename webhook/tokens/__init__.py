"""Short-lived registry tokens: minted from a cloud identity (or a kubelet credential provider), refreshed.

A ``token`` source does not copy a credential that someone stored: the webhook mints one
(:mod:`.gcp`, :mod:`.ecr`, :mod:`.acr`, :mod:`.exec_provider`), one minter per distinct
source (:mod:`.minter`), refreshed from the token's real expiry (:mod:`.schedule`).
"""

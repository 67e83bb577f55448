"""Named API keys: the keys file (`keyfile.py`), the set of keys the middleware checks and
reloads (`ring.py`), per-key daily quotas reserved before any upstream call (`quota.py`), and
`flux-proxy keys new` (`new_key.py`)."""

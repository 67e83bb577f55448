"""The MCP (Model Context Protocol) server: FLUX.2 images for agents, over stdio
(`flux-proxy mcp`) and streamable HTTP (`/mcp` in the proxy's app), on the official SDK.

`server.py` declares the tools, `tools.py` and `listings.py` do them, `inputs.py` turns
arguments into the HTTP API's `RawRequest`, `preview.py` keeps answers small, `progress.py`
reports while images are made, `work.py` is the one path to the work layer, `http.py` and
`stdio.py` are the transports.
"""

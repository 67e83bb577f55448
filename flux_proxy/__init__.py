"""flux-proxy: the OpenAI Images API in front of Cloudflare Workers AI image models."""

__version__ = "0.1.0"

"""LangChain's DALL-E wrapper and tool, unchanged, against a real proxy and the emulator.

They ask for `dall-e-2` at 1024x1024 with no `response_format` and read only `.url`: the proxy
must map the name to its default model and answer with a URL that serves a real image.
"""

from __future__ import annotations

import io

import httpx
from langchain_community.tools.openai_dalle_image_generation import (
    OpenAIDALLEImageGenerationTool,
)
from langchain_community.utilities.dalle_image_generator import DallEAPIWrapper
from PIL import Image


def fetched_image(url: str) -> Image.Image:
    response = httpx.get(url)  # no key: the URL is the credential
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


def test_dalle_wrapper_with_its_defaults_gets_a_url_to_a_real_image(proxy, emulator):
    wrapper = DallEAPIWrapper(base_url=proxy.base_url, api_key=proxy.key, max_retries=0)
    assert (wrapper.model_name, wrapper.size, wrapper.n) == ("dall-e-2", "1024x1024", 1)
    url = wrapper.run("a lighthouse in a storm")
    assert url.startswith(proxy.url + "/v1/images/files/")
    assert fetched_image(url).size == (1024, 1024)
    (call,) = emulator.calls()
    assert call["model"] == "@cf/black-forest-labs/flux-2-dev"
    assert (call["fields"]["width"], call["fields"]["height"]) == ("1024", "1024")
    assert call["fields"]["prompt"] == "a lighthouse in a storm"


def test_dalle_tool_unchanged_returns_a_working_url(proxy, emulator):
    wrapper = DallEAPIWrapper(
        model="dall-e-2", base_url=proxy.base_url, api_key=proxy.key, max_retries=0
    )
    tool = OpenAIDALLEImageGenerationTool(api_wrapper=wrapper)
    url = tool.invoke("a red fox in the snow")
    assert fetched_image(url).size == (1024, 1024)
    assert len(emulator.calls()) == 1


def test_dalle_wrapper_with_n_2_and_a_served_model_gets_two_urls(proxy, emulator):
    wrapper = DallEAPIWrapper(
        model="flux-2-klein-4b",
        n=2,
        size="512x512",
        quality="hd",  # dall-e-3's knob: accepted, no model has it
        base_url=proxy.base_url,
        api_key=proxy.key,
        max_retries=0,
    )
    urls = wrapper.run("a paper boat").split("\n")
    assert len(urls) == 2 and urls[0] != urls[1]
    assert [fetched_image(url).size for url in urls] == [(512, 512)] * 2
    assert {call["model"] for call in emulator.calls()} == {"@cf/black-forest-labs/flux-2-klein-4b"}


def test_dalle_wrapper_configured_only_through_the_environment(proxy, emulator, monkeypatch):
    monkeypatch.setenv("OPENAI_API_BASE", proxy.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", proxy.key)
    url = DallEAPIWrapper(max_retries=0).run("a koi pond")
    assert fetched_image(url).size == (1024, 1024)

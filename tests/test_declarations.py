"""One declaration per request body: `/openapi.json` shows what validation enforces, read
from the same pydantic models, and other resources add their operations to the same document."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, Field

from flux_proxy.api import openapi
from flux_proxy.api.schemas import MAX_N, ImageGenerationBody
from flux_proxy.api.validation import validate_body
from flux_proxy.errors import ApiError
from flux_proxy.models import MODELS


def schemas() -> dict:
    return openapi.openapi_document()["components"]["schemas"]


def test_the_json_body_schema_is_the_validated_declaration():
    n = schemas()["ImageGenerationRequest"]["properties"]["n"]
    assert (n["type"], n["minimum"], n["maximum"]) == ("integer", 1, MAX_N)
    with pytest.raises(ApiError) as caught:
        validate_body(ImageGenerationBody, {"prompt": "a", "n": MAX_N + 1})
    assert caught.value.param == "n"
    assert caught.value.message == f"n must be between 1 and {MAX_N}; got {MAX_N + 1}"


def test_model_dependent_bounds_are_the_widest_in_the_model_table():
    width = schemas()["ImageGenerationRequest"]["properties"]["width"]
    sizes = [m.size_range for m in MODELS if m.size_range]
    assert width["minimum"] == min(r.minimum for r in sizes)
    assert width["maximum"] == max(r.maximum for r in sizes)


def test_a_form_schema_is_derived_from_the_same_declaration_as_text_and_files():
    form = schemas()["ImageEditForm"]["properties"]
    assert form["n"]["type"] == "string" and "pattern" in form["n"]
    assert form["stream"]["enum"] == ["true", "false", "1", "0"]
    assert form["image"]["format"] == "binary" and form["mask"]["format"] == "binary"
    assert form["image[]"]["maxItems"] == 16
    assert "images" not in form  # data URL lists are for JSON bodies
    assert form["input_fidelity"]["enum"] == ["high", "low"]


def test_variations_are_in_the_document_with_their_required_image():
    document = openapi.openapi_document()
    body = document["paths"]["/v1/images/variations"]["post"]["requestBody"]
    assert set(body["content"]) == {"multipart/form-data"}
    assert schemas()["ImageVariationForm"]["required"] == ["image"]
    assert "prompt" not in schemas()["ImageVariationForm"]["properties"]


def test_another_resource_adds_its_declared_body_and_operation():
    class Widget(BaseModel):
        name: str = Field(description="What to call it.")

    path = "/v1/test-widgets"
    try:
        openapi.add_operation(
            path,
            "post",
            openapi.operation(
                "createWidget",
                "Make a widget",
                body=openapi.request_body(json=openapi.add_schema("WidgetRequest", Widget)),
                ok=openapi.json_ok("The widget.", openapi.ref("WidgetRequest")),
            ),
        )
        document = openapi.openapi_document()
        assert document["components"]["schemas"]["WidgetRequest"]["required"] == ["name"]
        assert document["paths"][path]["post"]["responses"]["400"]["$ref"].endswith("Error400")
    finally:
        openapi._OPERATIONS.pop(path, None)
        openapi._COMPONENTS.pop("WidgetRequest", None)
        openapi.openapi_document.cache_clear()

"""`POST /v1/images/variations` (the SDK's `images.create_variation(image=..., n=, size=,
response_format=)`): OpenAI serves it with DALL·E 2; here `VARIATION_MODEL` (FLUX.2 [dev] by
default) makes each of the `n` from the image as reference 0 and `VARIATION_PROMPT`, each with
its own seed. A caller may name one of the proxy's own models that takes a reference image
instead; OpenAI names (`dall-e-2`) mean VARIATION_MODEL. The answer's form follows the name
used, as for generations (`dall-e-2` with no `response_format`: a URL).
"""

from __future__ import annotations

from flux_proxy.api import openapi
from flux_proxy.api.body import RawRequest
from flux_proxy.api.model_lookup import configured_aliases
from flux_proxy.api.parse import ImageRequest, assemble
from flux_proxy.api.schemas import ImageVariationBody, VariationFiles
from flux_proxy.api.validation import validate_body
from flux_proxy.errors import invalid
from flux_proxy.models import ModelSpec, find_model
from flux_proxy.settings import Settings

VARIATIONS_PATH = "/v1/images/variations"


async def build_variation_request(
    raw: RawRequest, settings: Settings, *, edit: bool = True
) -> ImageRequest:
    """A variation as an edit of the one image with the variation prompt (`edit` is there so
    this fits where `build_image_request` does; a variation is always answered as an edit)."""
    body = validate_body(ImageVariationBody, raw.fields)
    if any(upload.field == "mask" for upload in raw.files) or raw.fields.get("mask"):
        raise invalid("variations take no mask", param="mask", code="unsupported_parameter")
    images = [upload for upload in raw.files if upload.field in ("image", "image[]")]
    if len(images) != 1 or len(raw.files) != 1:
        raise invalid(
            f"a variation takes exactly one image file, in the form field 'image'; got "
            f"{len(raw.files)} files",
            param="image",
            code="missing_required_parameter" if not raw.files else "invalid_value",
        )
    model = _variation_model(body.model, settings)
    return await assemble(
        body, raw, settings, model=model, prompt=settings.variation_prompt, edit=True
    )


def _variation_model(name: str | None, settings: Settings) -> ModelSpec:
    named = find_model(name, configured_aliases(settings)) if name and name.strip() else None
    if named is not None and named.takes_references:
        return named
    spec = find_model(settings.variation_model, configured_aliases(settings))
    if spec is None or not spec.takes_references:
        raise invalid(
            f"VARIATION_MODEL {settings.variation_model[:100]!r} is not a served model that "
            "takes a reference image",
            param="model",
            code="model_not_found",
        )
    return spec


openapi.add_operation(
    VARIATIONS_PATH,
    "post",
    openapi.operation(
        "createImageVariation",
        "Create variations of an image",
        description="Made by VARIATION_MODEL from the image and VARIATION_PROMPT, each with its "
        "own seed.",
        body=openapi.request_body(
            form=openapi.add_form("ImageVariationForm", ImageVariationBody, VariationFiles)
        ),
        ok=openapi.images_ok(),
        errors_=openapi.IMAGE_ERRORS,
    ),
)

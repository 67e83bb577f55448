#!/usr/bin/env bash
# The seed project's curl calls, against flux-proxy: health, a JSON request, a multipart
# request with a reference image (input_image_0), three references for character
# consistency, a JSON (structured) prompt, and a URL answer fetched without the key.
#
#   FLUX_PROXY_BASE_URL=http://127.0.0.1:8000/v1 FLUX_PROXY_API_KEY=... ./curl.sh
#
# Needs curl, base64 and jq (or python3 when jq is missing). Exits non-zero on any failure.
set -euo pipefail

BASE_URL="${FLUX_PROXY_BASE_URL:-http://127.0.0.1:8000/v1}"
API_KEY="${FLUX_PROXY_API_KEY:-no-key}"
OUTPUT_DIR="${OUTPUT_DIR:-out}"
ROOT="${BASE_URL%/v1}"
mkdir -p "$OUTPUT_DIR"

# `field FILE EXPR`: one value from a JSON answer, e.g. field answer.json .data[0].b64_json
field() {
  if command -v jq >/dev/null 2>&1; then
    jq -er "$2" "$1"
  else
    python3 - "$1" "$2" <<'PY'
import json, re, sys
value = json.load(open(sys.argv[1]))
for key in re.findall(r"[A-Za-z_]+|\d+", sys.argv[2]):
    value = value[int(key)] if key.isdigit() else value[key]
print(value)
PY
  fi
}

# `save ANSWER NAME`: decode the answer's first image to $OUTPUT_DIR/NAME.<format>
save() {
  local format
  format="$(field "$1" .output_format)"
  field "$1" '.data[0].b64_json' | base64 --decode >"$OUTPUT_DIR/$2.$format"
  echo "  saved $OUTPUT_DIR/$2.$format (account $(field "$1" .account_used))"
}

echo "== health"
curl -sS --fail-with-body "$ROOT/health" -o "$OUTPUT_DIR/health.json"
echo "  status: $(field "$OUTPUT_DIR/health.json" .status)"

echo "== JSON: prompt, steps, width, height"
curl -sS --fail-with-body "$BASE_URL/images/generations" \
  -H "Authorization: Bearer $API_KEY" \
  -H "Content-Type: application/json" \
  -d '{
    "prompt": "A serene Japanese garden with cherry blossoms",
    "steps": 25,
    "width": 1024,
    "height": 1024
  }' -o "$OUTPUT_DIR/garden.json"
save "$OUTPUT_DIR/garden.json" garden

# The garden just made serves as the reference image for the next calls.
REFERENCE="$OUTPUT_DIR/garden.$(field "$OUTPUT_DIR/garden.json" .output_format)"

echo "== multipart: input_image_0"
curl -sS --fail-with-body "$BASE_URL/images/generations" \
  -H "Authorization: Bearer $API_KEY" \
  -F "prompt=A cyberpunk portrait of the person in the image" \
  -F "input_image_0=@$REFERENCE" \
  -F "steps=30" \
  -F "width=1024" \
  -F "height=1024" \
  -o "$OUTPUT_DIR/portrait.json"
save "$OUTPUT_DIR/portrait.json" portrait

echo "== multipart: three references for consistency"
curl -sS --fail-with-body "$BASE_URL/images/generations" \
  -H "Authorization: Bearer $API_KEY" \
  -F "prompt=The character in different poses: standing, sitting, running" \
  -F "input_image_0=@$REFERENCE" \
  -F "input_image_1=@$OUTPUT_DIR/portrait.$(field "$OUTPUT_DIR/portrait.json" .output_format)" \
  -F "input_image_2=@$REFERENCE" \
  -F "steps=35" \
  -F "width=1536" \
  -F "height=1024" \
  -o "$OUTPUT_DIR/poses.json"
save "$OUTPUT_DIR/poses.json" poses

echo "== JSON prompt with a colour palette"
curl -sS --fail-with-body "$BASE_URL/images/generations" \
  -H "Authorization: Bearer $API_KEY" \
  -H "Content-Type: application/json" \
  -d '{
    "prompt": {
      "scene": "futuristic city",
      "subjects": [{"type": "robot", "pose": "standing", "expression": "friendly"}],
      "style": "cyberpunk digital art",
      "color_palette": ["#00FFFF", "#FF00FF", "#1A1A2E"]
    },
    "width": 1024,
    "height": 768
  }' -o "$OUTPUT_DIR/city.json"
save "$OUTPUT_DIR/city.json" city

echo "== URL answer, fetched without the key"
curl -sS --fail-with-body "$BASE_URL/images/generations" \
  -H "Authorization: Bearer $API_KEY" \
  -H "Content-Type: application/json" \
  -d '{"prompt": "A paper boat on a pond", "model": "flux-2-klein-4b", "response_format": "url"}' \
  -o "$OUTPUT_DIR/boat.json"
URL="$(field "$OUTPUT_DIR/boat.json" '.data[0].url')"
curl -sS --fail-with-body "$URL" -o "$OUTPUT_DIR/boat.${URL##*.}"
echo "  saved $OUTPUT_DIR/boat.${URL##*.} from $URL"

echo "done"

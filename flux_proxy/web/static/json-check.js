// Where is the mistake in this JSON? Browsers' JSON.parse messages vary and often give no
// position ("Unexpected token 'c', ... is not valid JSON"), so this small scanner finds the
// first error itself and says it in plain words. JSON.parse stays the judge of valid input.

/** Returns {position, reason} for the first syntax error, or null if none was found. */
export function locateJsonError(text) {
  let i = 0;
  let lastComma = -1;

  const fail = (reason, at = i) => {
    throw { position: at, reason };
  };
  const skipSpace = () => {
    while (i < text.length && " \t\n\r".includes(text[i])) i += 1;
  };
  const ended = () => i >= text.length;

  function value() {
    skipSpace();
    const c = text[i];
    if (c === "{") return object();
    if (c === "[") return array();
    if (c === '"') return string();
    if (c === "-" || (c >= "0" && c <= "9")) return number();
    for (const word of ["true", "false", "null"]) {
      if (text.startsWith(word, i)) {
        i += word.length;
        return;
      }
    }
    if (ended()) fail("the JSON ends too early; a value is missing");
    if (c === "'") fail("strings need double quotes, not single quotes");
    if (/[A-Za-z_]/.test(c)) fail("text values need double quotes");
    if (c === "," || c === "}" || c === "]") fail(`a value is missing before ${c}`);
    fail(`unexpected ${JSON.stringify(c)}`);
  }

  function object() {
    i += 1;
    skipSpace();
    if (text[i] === "}") {
      i += 1;
      return;
    }
    for (;;) {
      skipSpace();
      if (text[i] === "}" && lastComma >= 0) fail("remove the comma before }", lastComma);
      if (ended()) fail("the JSON ends too early; a } is missing");
      if (text[i] === "'") fail("keys need double quotes, not single quotes");
      if (text[i] !== '"') fail("expected a key in double quotes");
      string();
      skipSpace();
      if (text[i] !== ":") fail("expected a colon after the key");
      i += 1;
      lastComma = -1;
      value();
      skipSpace();
      if (text[i] === ",") {
        lastComma = i;
        i += 1;
        continue;
      }
      if (text[i] === "}") {
        i += 1;
        lastComma = -1;
        return;
      }
      fail(ended() ? "the JSON ends too early; a } is missing" : "expected a comma or }");
    }
  }

  function array() {
    i += 1;
    skipSpace();
    if (text[i] === "]") {
      i += 1;
      return;
    }
    for (;;) {
      skipSpace();
      if (text[i] === "]" && lastComma >= 0) fail("remove the comma before ]", lastComma);
      lastComma = -1;
      value();
      skipSpace();
      if (text[i] === ",") {
        lastComma = i;
        i += 1;
        continue;
      }
      if (text[i] === "]") {
        i += 1;
        lastComma = -1;
        return;
      }
      fail(ended() ? "the JSON ends too early; a ] is missing" : "expected a comma or ]");
    }
  }

  function string() {
    const start = i;
    i += 1;
    for (;;) {
      if (ended()) fail("this string is never closed with a double quote", start);
      const c = text[i];
      if (c === '"') {
        i += 1;
        return;
      }
      if (c === "\\") {
        const next = text[i + 1];
        if (next === "u") {
          if (!/^[0-9a-fA-F]{4}$/.test(text.slice(i + 2, i + 6))) fail("\\u needs four hex digits");
          i += 6;
        } else if (next !== undefined && '"\\/bfnrt'.includes(next)) {
          i += 2;
        } else {
          fail(`unknown escape \\${next ?? ""}`);
        }
        continue;
      }
      if (c < " ") fail(c === "\n" ? "a line break inside a string must be written as \\n" : "a control character inside a string");
      i += 1;
    }
  }

  function number() {
    const pattern = /-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/y;
    pattern.lastIndex = i;
    const match = pattern.exec(text);
    if (!match || match[0] === "-") fail("not a valid number");
    i += match[0].length;
  }

  try {
    value();
    skipSpace();
    if (!ended()) fail("unexpected text after the end of the JSON");
    return null;
  } catch (error) {
    if (error && typeof error.position === "number") return error;
    throw error;
  }
}

/** "Line 3, column 11" for a position in the text. */
export function lineAndColumn(text, position) {
  const before = text.slice(0, position).split("\n");
  return { line: before.length, column: before[before.length - 1].length + 1 };
}

//! Structured output and token biases: `response_format` (chat and
//! completions), vLLM's `guided_json` / `guided_regex` / `guided_grammar`
//! (completions), and `logit_bias`. The grammar is only read here; it is
//! compiled against the model's vocabulary when the request is planned
//! ([`crate::generate`]), where a schema the engine cannot follow becomes a
//! 400 naming the same parameter.

use serde_json::Value;
use sluice_runtime::GrammarSpec;

use crate::error::ApiError;

/// Longest grammar text accepted (a schema, a regex or a Lark grammar).
const MAX_GRAMMAR_BYTES: usize = 64 << 10;
/// `logit_bias` entries at most (OpenAI's limit).
const MAX_LOGIT_BIAS: usize = 300;

/// A grammar the output must match, and the parameter it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    pub spec: GrammarSpec,
    /// The request field to name when the grammar cannot be compiled.
    pub param: &'static str,
}

/// `response_format`: `text` (or absent) is free text; `json_object` any
/// JSON object; `json_schema` a JSON schema (`json_schema.schema`).
pub(crate) fn response_format(format: Option<&Value>) -> Result<Option<Constraint>, ApiError> {
    const P: &str = "response_format";
    let Some(format) = format else {
        return Ok(None);
    };
    let constraint = |spec: GrammarSpec| -> Result<Option<Constraint>, ApiError> {
        Ok(Some(Constraint { spec, param: P }))
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => constraint(GrammarSpec::JsonObject),
        Some("json_schema") => {
            let Some(Value::Object(js)) = format.get("json_schema") else {
                return Err(ApiError::invalid(
                    "response_format.json_schema",
                    "'response_format' of type 'json_schema' needs 'json_schema': \
                     {\"name\": ..., \"schema\": {...}}",
                ));
            };
            match js.get("name") {
                Some(Value::String(name)) if valid_name(name) => {}
                Some(_) => {
                    return Err(ApiError::invalid(
                        "response_format.json_schema.name",
                        "'name' must be 1 to 64 characters of a-z, A-Z, 0-9, '_' and '-'",
                    ))
                }
                None => {
                    return Err(ApiError::invalid(
                        "response_format.json_schema.name",
                        "'response_format.json_schema.name' is required",
                    ))
                }
            }
            let strict = match js.get("strict") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => {
                    return Err(ApiError::invalid(
                        "response_format.json_schema.strict",
                        "'strict' must be a boolean",
                    ))
                }
            };
            match js.get("schema") {
                // OpenAI treats a schema-less json_schema as any JSON object.
                None | Some(Value::Null) => constraint(GrammarSpec::JsonObject),
                Some(schema @ Value::Object(_)) => constraint(GrammarSpec::JsonSchema {
                    schema: grammar_text("response_format.json_schema.schema", schema)?,
                    strict,
                }),
                Some(_) => Err(ApiError::invalid(
                    "response_format.json_schema.schema",
                    "'schema' must be a JSON Schema object",
                )),
            }
        }
        _ => Err(ApiError::invalid(
            P,
            "'response_format' must be {\"type\": \"text\"}, {\"type\": \"json_object\"} or \
             {\"type\": \"json_schema\", \"json_schema\": {...}}",
        )),
    }
}

/// vLLM's completion extras: at most one of `guided_json` (a schema, as an
/// object or as JSON text), `guided_regex` and `guided_grammar` (Lark), and
/// not together with a JSON `response_format`.
pub(crate) fn guided(
    guided_json: Option<Value>,
    guided_regex: Option<String>,
    guided_grammar: Option<String>,
    response_format: Option<Constraint>,
) -> Result<Option<Constraint>, ApiError> {
    let mut found: Vec<Constraint> = Vec::new();
    if let Some(json) = guided_json {
        let schema = match json {
            Value::String(text) => serde_json::from_str::<Value>(&text).map_err(|e| {
                ApiError::invalid("guided_json", format!("'guided_json' is not JSON: {e}"))
            })?,
            other => other,
        };
        if !schema.is_object() {
            return Err(ApiError::invalid(
                "guided_json",
                "'guided_json' must be a JSON Schema object",
            ));
        }
        found.push(Constraint {
            spec: GrammarSpec::JsonSchema {
                schema: grammar_text("guided_json", &schema)?,
                strict: true,
            },
            param: "guided_json",
        });
    }
    if let Some(rx) = guided_regex {
        check_size("guided_regex", rx.len())?;
        found.push(Constraint {
            spec: GrammarSpec::Regex(rx),
            param: "guided_regex",
        });
    }
    if let Some(lark) = guided_grammar {
        check_size("guided_grammar", lark.len())?;
        found.push(Constraint {
            spec: GrammarSpec::Lark(lark),
            param: "guided_grammar",
        });
    }
    found.extend(response_format);
    if found.len() > 1 {
        return Err(ApiError::invalid(
            found[1].param,
            format!(
                "give one of guided_json, guided_regex, guided_grammar and a JSON \
                 response_format, not both '{}' and '{}'",
                found[0].param, found[1].param
            ),
        ));
    }
    Ok(found.pop())
}

/// `logit_bias`: token id (as a string key, OpenAI style) → bias in
/// [-100, 100]. Ids are checked against the vocabulary once the model is known.
pub(crate) fn logit_bias(
    bias: Option<serde_json::Map<String, Value>>,
) -> Result<Vec<(u32, f32)>, ApiError> {
    let Some(bias) = bias else {
        return Ok(Vec::new());
    };
    if bias.len() > MAX_LOGIT_BIAS {
        return Err(ApiError::invalid(
            "logit_bias",
            format!("at most {MAX_LOGIT_BIAS} tokens may be biased"),
        ));
    }
    let mut out = Vec::with_capacity(bias.len());
    for (key, value) in bias {
        let at = format!("logit_bias.{key}");
        let id: u32 = key.trim().parse().map_err(|_| {
            ApiError::invalid(
                at.clone(),
                format!("'{key}' is not a token id; logit_bias maps token ids to biases"),
            )
        })?;
        let b = value.as_f64().filter(|b| (-100.0..=100.0).contains(b));
        let Some(b) = b else {
            return Err(ApiError::invalid(
                at,
                format!("the bias of token {id} is {value}; it must be a number in [-100, 100]"),
            ));
        };
        out.push((id, b as f32));
    }
    // Sorted, so equal requests give equal cache keys whatever the order sent.
    out.sort_by_key(|&(id, _)| id);
    Ok(out)
}

pub(super) fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn grammar_text(param: &str, schema: &Value) -> Result<String, ApiError> {
    let text = schema.to_string();
    check_size(param, text.len())?;
    Ok(text)
}

fn check_size(param: &str, len: usize) -> Result<(), ApiError> {
    if len > MAX_GRAMMAR_BYTES {
        return Err(ApiError::invalid(
            param,
            format!("'{param}' is {len} bytes; at most {MAX_GRAMMAR_BYTES} are accepted"),
        ));
    }
    Ok(())
}

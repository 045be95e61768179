//! `POST /v1/completions`: the request and its prompt shapes.

use serde_json::Value;

use super::{
    common, int_in, reject_unknown, structured, CommonWire, Input, ValidRequest, MAX_CHOICES,
    MAX_TOP_LOGPROBS,
};
use crate::error::ApiError;
use crate::wire::CompletionRequest;

/// Validates `POST /v1/completions`.
pub fn completion(req: CompletionRequest) -> Result<ValidRequest, ApiError> {
    let CompletionRequest {
        model,
        prompt,
        max_tokens,
        temperature,
        top_p,
        n,
        stop,
        seed,
        presence_penalty,
        frequency_penalty,
        logprobs,
        echo,
        suffix,
        best_of,
        user,
        stream,
        stream_options,
        top_k,
        min_p,
        repetition_penalty,
        ignore_eos,
        stop_token_ids,
        logit_bias,
        response_format,
        guided_json,
        guided_regex,
        guided_grammar,
        mut other,
    } = req;
    let max_cost = super::max_cost(other.remove(super::MAX_COST).as_ref())?;
    reject_unknown(other.keys())?;
    let constraint = structured::guided(
        guided_json,
        guided_regex,
        guided_grammar,
        structured::response_format(response_format.as_ref())?,
    )?;
    if echo == Some(true) {
        return Err(ApiError::unsupported(
            "echo",
            "'echo': true is not supported",
        ));
    }
    if suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::unsupported("suffix", "'suffix' is not supported"));
    }
    let logprobs = logprobs
        .map(|v| int_in("logprobs", v, 0, MAX_TOP_LOGPROBS))
        .transpose()?;
    if let Some(b) = best_of {
        if b != n.unwrap_or(1) {
            return Err(ApiError::unsupported(
                "best_of",
                "'best_of' is supported only equal to n (every candidate is returned)",
            ));
        }
    }
    let Some(prompt) = prompt else {
        return Err(ApiError::invalid("prompt", "'prompt' is required"));
    };
    let input = prompt_input(prompt)?;
    let mut req = common(
        CommonWire {
            model,
            max_tokens,
            temperature,
            top_p,
            n,
            stop,
            seed,
            presence_penalty,
            frequency_penalty,
            user,
            stream,
            stream_options,
            top_k,
            min_p,
            repetition_penalty,
            ignore_eos,
            stop_token_ids,
            logit_bias,
            logprobs,
            constraint,
        },
        "max_tokens",
        input,
    )?;
    req.max_cost = max_cost;
    Ok(req)
}

/// `prompt`: a string, strings, token ids, or arrays of token ids.
fn prompt_input(prompt: Value) -> Result<Input, ApiError> {
    let bad = || {
        ApiError::invalid(
            "prompt",
            "'prompt' must be a string, an array of strings, an array of token ids, \
             or an array of arrays of token ids",
        )
    };
    let items = match prompt {
        Value::String(s) => return Ok(Input::Text(vec![s])),
        Value::Array(items) if !items.is_empty() => items,
        Value::Array(_) => return Err(ApiError::invalid("prompt", "'prompt' must not be empty")),
        _ => return Err(bad()),
    };
    if items.len() > MAX_CHOICES {
        return Err(ApiError::invalid(
            "prompt",
            format!("at most {MAX_CHOICES} prompts are allowed"),
        ));
    }
    match &items[0] {
        Value::String(_) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s),
                _ => Err(ApiError::invalid(
                    format!("prompt[{i}]"),
                    "expected a string like the others",
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Input::Text),
        Value::Number(_) => token_ids("prompt", items).map(|ids| Input::Tokens(vec![ids])),
        Value::Array(_) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::Array(ids) if !ids.is_empty() => token_ids(&format!("prompt[{i}]"), ids),
                _ => Err(ApiError::invalid(
                    format!("prompt[{i}]"),
                    "expected a non-empty array of token ids like the others",
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Input::Tokens),
        _ => Err(bad()),
    }
}

fn token_ids(at: &str, items: Vec<Value>) -> Result<Vec<u32>, ApiError> {
    items
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .ok_or_else(|| {
                    ApiError::invalid(
                        format!("{at}[{i}]"),
                        "expected a token id (a non-negative integer)",
                    )
                })
        })
        .collect()
}

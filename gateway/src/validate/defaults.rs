//! A model's default sampling parameters applied to a validated request:
//! only to the fields the request left out, so the request always wins.

use crate::config::SamplingDefaults;

use super::Job;

/// Which defaultable fields a request left out. Built by the validator
/// from the wire request, before the OpenAI defaults fill the gaps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Omitted {
    pub temperature: bool,
    pub top_p: bool,
    pub top_k: bool,
    pub min_p: bool,
    pub repetition_penalty: bool,
    pub presence_penalty: bool,
    pub frequency_penalty: bool,
    pub max_tokens: bool,
}

impl Job {
    /// Fills what the request left out from `defaults`. A filled field
    /// counts as given afterwards, so applying defaults twice (or a second
    /// set) never overrides the first. Call it before the cache key is
    /// computed, and only for local models: a provider gets the request as
    /// the client sent it.
    pub fn apply_defaults(&mut self, defaults: &SamplingDefaults) {
        let SamplingDefaults {
            temperature,
            top_p,
            top_k,
            min_p,
            repetition_penalty,
            presence_penalty,
            frequency_penalty,
            max_tokens,
        } = defaults;
        let s = &mut self.sampling;
        let o = &mut self.omitted;
        fill(&mut o.temperature, &mut s.temperature, *temperature);
        fill(&mut o.top_p, &mut s.top_p, *top_p);
        fill(&mut o.top_k, &mut s.top_k, *top_k);
        fill(&mut o.min_p, &mut s.min_p, *min_p);
        fill(
            &mut o.repetition_penalty,
            &mut s.repetition_penalty,
            *repetition_penalty,
        );
        fill(
            &mut o.presence_penalty,
            &mut s.presence_penalty,
            *presence_penalty,
        );
        fill(
            &mut o.frequency_penalty,
            &mut s.frequency_penalty,
            *frequency_penalty,
        );
        fill(&mut o.max_tokens, &mut s.max_tokens, max_tokens.map(Some));
    }
}

fn fill<T>(omitted: &mut bool, field: &mut T, default: Option<T>) {
    if let (true, Some(value)) = (*omitted, default) {
        *field = value;
        *omitted = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ChatCompletionRequest;
    use serde_json::{json, Value};

    fn job(body: Value) -> Job {
        let mut b = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        for (k, v) in body.as_object().unwrap() {
            b[k] = v.clone();
        }
        let req: ChatCompletionRequest = serde_json::from_value(b).unwrap();
        super::super::chat(req).unwrap().job
    }

    fn demo() -> SamplingDefaults {
        SamplingDefaults {
            temperature: Some(0.2),
            top_p: Some(0.9),
            top_k: Some(40),
            max_tokens: Some(64),
            ..SamplingDefaults::default()
        }
    }

    #[test]
    fn defaults_fill_what_the_request_left_out() {
        let mut j = job(json!({}));
        j.apply_defaults(&demo());
        assert_eq!(j.sampling.temperature, 0.2);
        assert_eq!(j.sampling.top_p, 0.9);
        assert_eq!(j.sampling.top_k, 40);
        assert_eq!(j.sampling.max_tokens, Some(64));
        // Fields without a default keep the OpenAI default.
        assert_eq!(j.sampling.presence_penalty, 0.0);
        assert_eq!(j.sampling.repetition_penalty, 1.0);
        assert!(j.omitted.presence_penalty && !j.omitted.temperature);
    }

    #[test]
    fn the_request_wins_over_the_defaults() {
        // Values equal to the OpenAI defaults count as given, too.
        let mut j = job(json!({"temperature": 1.0, "top_p": 1.0, "top_k": -1, "max_tokens": 5}));
        j.apply_defaults(&demo());
        assert_eq!(j.sampling.temperature, 1.0);
        assert_eq!(j.sampling.top_p, 1.0);
        assert_eq!(j.sampling.top_k, 0);
        assert_eq!(j.sampling.max_tokens, Some(5));
    }

    #[test]
    fn relying_on_defaults_equals_spelling_them_out() {
        let mut relying = job(json!({}));
        relying.apply_defaults(&demo());
        let mut spelled =
            job(json!({"temperature": 0.2, "top_p": 0.9, "top_k": 40, "max_tokens": 64}));
        spelled.apply_defaults(&demo());
        assert_eq!(relying.parts(), spelled.parts());
    }

    #[test]
    fn a_second_set_of_defaults_changes_nothing() {
        let mut j = job(json!({}));
        j.apply_defaults(&demo());
        j.apply_defaults(&SamplingDefaults {
            temperature: Some(1.5),
            ..SamplingDefaults::default()
        });
        assert_eq!(j.sampling.temperature, 0.2);
    }

    #[test]
    fn no_defaults_leave_the_openai_defaults() {
        let before = job(json!({}));
        let mut after = before.clone();
        after.apply_defaults(&SamplingDefaults::default());
        assert_eq!(before, after);
        assert_eq!(after.sampling.temperature, 1.0);
    }
}

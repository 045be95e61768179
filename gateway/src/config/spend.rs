//! The `[spend]` section: the spend log's writer and the reference price
//! the savings report compares against.
//!
//! ```toml
//! [spend]
//! # What a request would have cost at a cloud provider (the currency of
//! # `[budgets]`), per 1k tokens; per-model overrides by public model name.
//! reference_price = { input_per_1k = 0.15, output_per_1k = 0.6 }
//! reference_models = { "qwen-72b" = { input_per_1k = 0.4, output_per_1k = 1.2 } }
//! queue = 10000        # rows waiting for the writer; a full queue is counted and audited
//! batch_rows = 500     # rows per insert
//! flush_ms = 150       # the longest a row waits for its batch
//! ```

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;

use super::{invalid, ConfigError, Price};

const DEFAULT_QUEUE: usize = 10_000;
const DEFAULT_BATCH_ROWS: usize = 500;
const DEFAULT_FLUSH_MS: u64 = 150;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpendSection {
    pub reference_price: Option<PriceSection>,
    #[serde(default)]
    pub reference_models: HashMap<String, PriceSection>,
    pub queue: Option<usize>,
    pub batch_rows: Option<usize>,
    pub flush_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceSection {
    pub input_per_1k: f64,
    pub output_per_1k: f64,
}

/// The resolved `[spend]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SpendSettings {
    pub reference: ReferencePrice,
    /// Rows the writer's queue holds.
    pub queue: usize,
    pub batch_rows: usize,
    pub flush: Duration,
}

impl Default for SpendSettings {
    fn default() -> Self {
        Self {
            reference: ReferencePrice::default(),
            queue: DEFAULT_QUEUE,
            batch_rows: DEFAULT_BATCH_ROWS,
            flush: Duration::from_millis(DEFAULT_FLUSH_MS),
        }
    }
}

/// The configured reference cloud price: one default and per-model
/// overrides. Without `reference_price` every reference cost is 0.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReferencePrice {
    pub default: Price,
    pub models: HashMap<String, Price>,
}

impl ReferencePrice {
    /// The price a request for `model` is compared against.
    pub fn for_model(&self, model: &str) -> Price {
        self.models.get(model).copied().unwrap_or(self.default)
    }
}

fn price(key: &str, section: PriceSection) -> Result<Price, ConfigError> {
    for (field, value) in [
        ("input_per_1k", section.input_per_1k),
        ("output_per_1k", section.output_per_1k),
    ] {
        if !value.is_finite() || value < 0.0 {
            return Err(invalid(
                format!("{key}.{field}"),
                format!("must be a price of 0 or more, not {value}"),
            ));
        }
    }
    Ok(Price {
        input_per_1k: section.input_per_1k,
        output_per_1k: section.output_per_1k,
    })
}

impl SpendSection {
    pub fn resolve(self) -> Result<SpendSettings, ConfigError> {
        let positive = |key: &str, value: Option<usize>, default: usize| match value {
            Some(0) => Err(invalid(
                format!("spend.{key}"),
                "must be at least 1 (leave it out for the default)",
            )),
            Some(n) => Ok(n),
            None => Ok(default),
        };
        let default = match self.reference_price {
            Some(p) => price("spend.reference_price", p)?,
            None => Price::default(),
        };
        let mut models = HashMap::new();
        for (model, p) in self.reference_models {
            let at = format!("spend.reference_models.\"{model}\"");
            models.insert(model, price(&at, p)?);
        }
        let flush_ms = match self.flush_ms {
            Some(0) => return Err(invalid("spend.flush_ms", "must be at least 1")),
            Some(ms) => ms,
            None => DEFAULT_FLUSH_MS,
        };
        Ok(SpendSettings {
            reference: ReferencePrice { default, models },
            queue: positive("queue", self.queue, DEFAULT_QUEUE)?,
            batch_rows: positive("batch_rows", self.batch_rows, DEFAULT_BATCH_ROWS)?,
            flush: Duration::from_millis(flush_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_prices_resolve_with_per_model_overrides() {
        let section: SpendSection = toml::from_str(
            r#"
            reference_price = { input_per_1k = 1.0, output_per_1k = 2.0 }
            reference_models = { "big" = { input_per_1k = 3.0, output_per_1k = 4.0 } }
            flush_ms = 50
            "#,
        )
        .unwrap();
        let s = section.resolve().unwrap();
        assert_eq!(s.reference.for_model("small").input_per_1k, 1.0);
        assert_eq!(s.reference.for_model("big").output_per_1k, 4.0);
        assert_eq!(s.flush, Duration::from_millis(50));
        assert_eq!(s.queue, DEFAULT_QUEUE);
    }

    #[test]
    fn a_negative_price_or_a_zero_queue_names_its_key() {
        let section: SpendSection = toml::from_str(
            "reference_models = { m = { input_per_1k = -1.0, output_per_1k = 0.0 } }",
        )
        .unwrap();
        let err = section.resolve().unwrap_err().to_string();
        assert!(
            err.starts_with("spend.reference_models.\"m\".input_per_1k"),
            "{err}"
        );
        let section: SpendSection = toml::from_str("queue = 0").unwrap();
        let err = section.resolve().unwrap_err().to_string();
        assert!(err.starts_with("spend.queue"), "{err}");
        assert!(toml::from_str::<SpendSection>("typo = 1").is_err());
    }
}

//! Placeholder while the provider is written.

use futures_util::future::BoxFuture;

use super::{Provider, ProviderConfig, ProviderError, ProviderRequest};
use crate::answer::BoxAnswer;

#[derive(Debug)]
pub struct GigaChat;

impl GigaChat {
    pub fn from_config(_cfg: &ProviderConfig) -> Result<Self, ProviderError> {
        Err(ProviderError::Config("not implemented yet".into()))
    }
}

impl Provider for GigaChat {
    fn kind(&self) -> &'static str {
        "gigachat"
    }
    fn chat<'a>(
        &'a self,
        _req: &'a ProviderRequest,
    ) -> BoxFuture<'a, Result<BoxAnswer, ProviderError>> {
        Box::pin(async { Err(ProviderError::Config("not implemented yet".into())) })
    }
}

//! The demo model's tokenizer and chat template, loaded once per test
//! binary.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::OnceLock;

use sluice_models::gguf::GgufFile;
use sluice_models::{demo_chat_model_path, ChatTemplate, Tokenizer};

pub fn smollm2() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let path = demo_chat_model_path();
        assert!(
            path.is_file(),
            "the demo model is missing at {}: run scripts/fetch-models.sh first",
            path.display()
        );
        let gguf = GgufFile::open(&path).expect("open the SmolLM2 GGUF");
        Tokenizer::from_gguf(&gguf).expect("build the tokenizer from GGUF metadata")
    })
}

pub fn smollm2_template() -> ChatTemplate {
    let tok = smollm2();
    let source = tok
        .chat_template_source()
        .expect("the GGUF carries a chat template");
    ChatTemplate::new(source, tok.bos_token(), tok.eos_token()).expect("compile")
}

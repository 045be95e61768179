//! Detection vectors, redaction, restoring and streaming.
//!
//! Where the valid numbers come from: the check digits were computed with
//! the published algorithms (a Python script written independently of
//! `checksum.rs`, kept in `NOTES-pii.md`), and several are well-known real
//! identifiers of organisations: INN 7707083893 and OGRN 1027700132195
//! (Sberbank), BIK 044525225 with its correspondent account
//! 30101810400000000225, SNILS 112-233-445 95 (the form's sample), cards
//! 4111 1111 1111 1111 / 5555 5555 5555 4444 (the networks' test numbers),
//! IBANs GB82 WEST 1234 5698 7654 32 and DE89 3704 0044 0532 0130 00 (the
//! registry's examples). Each invalid vector is a valid one with its last
//! digit changed.

use std::collections::VecDeque;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use sluice_models::ChatMessage;
use sluice_runtime::{FinishReason, Usage};

use super::stream::{Carrier, HeldAnswer};
use super::*;
use crate::answer::{collect, Answer, BoxAnswer, Step};
use crate::config::Secret;

fn detector() -> Detector {
    Detector::new().unwrap()
}

/// The kinds found in `text`, with the text of each.
fn kinds(text: &str) -> Vec<(PiiEntity, String)> {
    detector()
        .scan(text)
        .into_iter()
        .map(|f| (f.entity, text[f.span].to_string()))
        .collect()
}

fn assert_found(text: &str, entity: PiiEntity, value: &str) {
    let found = kinds(text);
    assert!(
        found.iter().any(|(e, v)| *e == entity && v == value),
        "expected {entity:?} `{value}` in {text:?}, found {found:?}"
    );
}

fn assert_none(text: &str) {
    let found = kinds(text);
    assert!(
        found.is_empty(),
        "expected nothing in {text:?}, found {found:?}"
    );
}

#[test]
fn emails_are_found_in_russian_and_english_text() {
    assert_found(
        "пишите на ivan.petrov+crm@mail.example.ru, спасибо",
        PiiEntity::Email,
        "ivan.petrov+crm@mail.example.ru",
    );
    assert_found(
        "Contact: John_Doe@Example.COM.",
        PiiEntity::Email,
        "John_Doe@Example.COM",
    );
    assert_none("user at example dot com, @handle, a@b");
}

#[test]
fn russian_and_e164_phones_are_found_with_their_separators() {
    for phone in [
        "+7 912 345-67-89",
        "+7 (912) 345-67-89",
        "8 (912) 345-67-89",
        "8-912-345-67-89",
        "89123456789",
        "+79123456789",
        "+44 20 7946 0958",
        "+14155552671",
    ] {
        assert_found(
            &format!("звоните: {phone}, после 10"),
            PiiEntity::Phone,
            phone,
        );
    }
    assert_none("version 1 2 3, 2024 year, 12345");
}

#[test]
fn cards_need_a_luhn_sum_and_an_issuer_prefix() {
    for card in [
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "5555555555554444",
        "2200 7012 3456 7896", // Mir
        "2204 1234 5678 9015", // Mir
        "2221 0000 0000 0009", // Mastercard 2-series
        "3782 822463 10005",   // American Express
    ] {
        assert_found(&format!("карта {card} до 12/27"), PiiEntity::Card, card);
    }
    for bad in [
        "4111 1111 1111 1112",
        "2200 7012 3456 7897",
        "1234 5678 9012 3456",
        "9111 1111 1111 1111",
    ] {
        assert_none(&format!("карта {bad} до"));
    }
}

#[test]
fn a_card_glued_to_another_number_in_one_run_is_still_found() {
    assert_found(
        "4111 1111 1111 1111 2 раза",
        PiiEntity::Card,
        "4111 1111 1111 1111",
    );
}

#[test]
fn ibans_are_checked_mod_97() {
    assert_found(
        "IBAN GB82 WEST 1234 5698 7654 32.",
        PiiEntity::Iban,
        "GB82 WEST 1234 5698 7654 32",
    );
    assert_found(
        "to DE89370400440532013000 today",
        PiiEntity::Iban,
        "DE89370400440532013000",
    );
    assert_none("IBAN GB82 WEST 1234 5698 7654 33.");
    assert_none("to DE89370400440532013001 today");
}

#[test]
fn inn_of_ten_and_twelve_digits_needs_its_check_digits() {
    assert_found(
        "ИНН 7707083893, КПП 773601001",
        PiiEntity::Inn,
        "7707083893",
    );
    assert_found("ИНН 500100732259", PiiEntity::Inn, "500100732259");
    assert_found("ИНН 1234567894", PiiEntity::Inn, "1234567894");
    assert_none("ИНН 7707083894");
    assert_none("ИНН 500100732258");
    assert_none("ИНН 500100732269");
}

#[test]
fn snils_needs_its_checksum() {
    assert_found("СНИЛС 112-233-445 95", PiiEntity::Snils, "112-233-445 95");
    assert_found("СНИЛС 11223344595", PiiEntity::Snils, "11223344595");
    assert_found("СНИЛС 123-456-789 64", PiiEntity::Snils, "123-456-789 64");
    assert_none("СНИЛС 112-233-445 96");
    assert_none("СНИЛС 123-456-789 65");
}

#[test]
fn ogrn_and_ogrnip_need_their_check_digits() {
    assert_found("ОГРН 1027700132195", PiiEntity::Ogrn, "1027700132195");
    assert_found("ОГРН 1157746000004", PiiEntity::Ogrn, "1157746000004");
    assert_found(
        "ОГРНИП 304500116000157",
        PiiEntity::Ogrnip,
        "304500116000157",
    );
    assert_none("ОГРН 1027700132196");
    assert_none("ОГРНИП 304500116000158");
}

#[test]
fn accounts_are_checked_against_a_nearby_bik() {
    let text = "р/с 40702810938000012345 в ПАО Сбербанк, БИК 044525225, к/с 30101810400000000225";
    assert_found(text, PiiEntity::Account, "40702810938000012345");
    assert_found(text, PiiEntity::Account, "30101810400000000225");
    // The key digit (the 9th) wrong: not flagged while the BIK is near.
    assert_none("р/с 40702810038000012345, БИК 044525225");
    assert_none("счёт 30101810500000000225, БИК 044525225");
    // No BIK: the context word is the only evidence.
    assert_found(
        "расчётный счет 40702810038000012345",
        PiiEntity::Account,
        "40702810038000012345",
    );
    assert_none("number 40702810038000012345");
}

#[test]
fn passports_need_a_context_word() {
    assert_found(
        "паспорт 4510 123456 выдан",
        PiiEntity::Passport,
        "4510 123456",
    );
    assert_found(
        "Passport: 45 10 123456",
        PiiEntity::Passport,
        "45 10 123456",
    );
    assert_found("серия 4510123456", PiiEntity::Passport, "4510123456");
    assert_none("заказ 4510 123456 отгружен");
}

#[test]
fn ip_addresses_are_parsed() {
    assert_found(
        "host 192.168.10.254 is down",
        PiiEntity::Ip,
        "192.168.10.254",
    );
    assert_found(
        "addr 2001:db8:85a3::8a2e:370:7334.",
        PiiEntity::Ip,
        "2001:db8:85a3::8a2e:370:7334",
    );
    assert_found(
        "loopback ::1 too? fe80::1ff:fe23:4567:890a",
        PiiEntity::Ip,
        "fe80::1ff:fe23:4567:890a",
    );
    assert_none("version 1.2.3.456, at 12:30:45, 999.1.1.1");
}

#[test]
fn secrets_of_the_common_shapes_are_found() {
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dBjftJeZ4CVPmB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    for secret in [
        "sk-proj-abcdefghijklmnopqrstuvwx0123",
        "sk-sl-ab12cd34_0123456789abcdef0123456789abcdef01234567",
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
        "xoxb-123456789012-abcdefghij",
        jwt,
    ] {
        assert_found(&format!("key={secret} ok"), PiiEntity::Secret, secret);
    }
    let pem =
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\nabc==\n-----END RSA PRIVATE KEY-----";
    assert_found(
        &format!("вот ключ:\n{pem}\nне теряй"),
        PiiEntity::Secret,
        pem,
    );
}

#[test]
fn hashes_and_ordinary_security_talk_are_not_flagged() {
    assert_none("sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    assert_none("commit 4b825dc642cb6eb9a060e54bf8d69288fbee4904, task-management-system-design");
    assert_none("rotate your API keys every 90 days; sk- prefixes mark OpenAI keys");
}

fn pii(actions: &[(PiiEntity, PiiAction)]) -> Pii {
    let mut settings = PiiSettings {
        enabled: true,
        hash_key: Some(Secret::new("test-key".into())),
        ..PiiSettings::default()
    };
    for (entity, action) in actions {
        let i = PiiEntity::ALL.iter().position(|e| e == entity).unwrap();
        settings.actions[i] = *action;
    }
    Pii::new(&settings).unwrap().unwrap()
}

fn chat_job(texts: &[&str]) -> Job {
    let body = serde_json::json!({
        "model": "m",
        "messages": texts.iter().map(|t| serde_json::json!({"role": "user", "content": t})).collect::<Vec<_>>(),
    });
    let wire: crate::wire::ChatCompletionRequest = serde_json::from_value(body).unwrap();
    crate::validate::chat(wire).unwrap().job
}

fn contents(job: &Job) -> Vec<String> {
    match &job.input {
        Input::Chat(m) => m.iter().map(|m| m.content.clone()).collect(),
        _ => Vec::new(),
    }
}

#[test]
fn mask_replaces_each_value_by_its_kind_and_reports_it() {
    let p = pii(&[]);
    let mut job = chat_job(&["mail ivan@mail.ru, card 4111 1111 1111 1111, ИНН 7707083893"]);
    let report = p.redact_request("t1", &mut job).unwrap();
    assert_eq!(contents(&job), ["mail [EMAIL], card [CARD], ИНН [INN]"]);
    assert_eq!(report.header_value().unwrap(), "masked=email,card,inn");
    assert_eq!(report.count_of(PiiAction::Mask, PiiEntity::Card), 1);
    assert!(report.carries_pii());
    assert!(!report.keeps_values());
    assert!(!report.audit_detail().contains("ivan"));
}

#[test]
fn hash_gives_equal_values_equal_tokens_within_a_tenant_only() {
    let p = pii(&[(PiiEntity::Phone, PiiAction::Hash)]);
    let mut job = chat_job(&["+7 912 345-67-89", "8 (912) 345 67 89", "+7 999 000-00-00"]);
    p.redact_request("t1", &mut job).unwrap();
    let t1 = contents(&job);
    assert!(
        t1[0].starts_with("[PHONE:") && t1[0].len() == "[PHONE:]".len() + 10,
        "{t1:?}"
    );
    // +7 and 8 spell different digit strings; the same digits written with
    // other separators hash the same.
    let mut again = chat_job(&["+7 (912) 3456789"]);
    p.redact_request("t1", &mut again).unwrap();
    assert_eq!(contents(&again)[0], t1[0]);
    assert_ne!(t1[0], t1[2]);
    let mut other = chat_job(&["+7 912 345-67-89"]);
    p.redact_request("t2", &mut other).unwrap();
    assert_ne!(contents(&other)[0], t1[0]);
}

#[test]
fn block_refuses_naming_the_kind_never_the_value() {
    let p = pii(&[(PiiEntity::Card, PiiAction::Block)]);
    let mut job = chat_job(&["hi", "my card is 5555 5555 5555 4444"]);
    let err = p.redact_request("t1", &mut job).unwrap_err();
    assert_eq!(err.status().as_u16(), 400);
    let body = err.body_json();
    assert!(body.contains("content_policy_violation"), "{body}");
    assert!(
        body.contains("card") && body.contains("messages[1].content"),
        "{body}"
    );
    assert!(!body.contains("5555"), "{body}");
}

#[test]
fn allow_and_pseudonymize_leave_the_request_text_alone() {
    let p = pii(&[
        (PiiEntity::Ip, PiiAction::Allow),
        (PiiEntity::Email, PiiAction::Pseudonymize),
    ]);
    let text = "host 10.0.0.1, write to anna@corp.ru";
    let mut job = chat_job(&[text]);
    let report = p.redact_request("t1", &mut job).unwrap();
    assert_eq!(contents(&job), [text]);
    assert!(report.keeps_values());
    assert_eq!(report.header_value().unwrap(), "pseudonymized=email");
}

#[test]
fn pseudonymize_gives_equal_values_one_placeholder_and_restores_them() {
    let p = pii(&[(PiiEntity::Email, PiiAction::Pseudonymize)]);
    let messages = vec![ChatMessage::text(
        "user",
        "Write to Anna@corp.ru and bob@corp.ru, cc anna@corp.ru; card 4111 1111 1111 1111",
    )];
    let (sent, placeholders) = p.pseudonymize(&messages);
    assert_eq!(
        sent[0].content,
        "Write to <PII_EMAIL_1> and <PII_EMAIL_2>, cc <PII_EMAIL_1>; card 4111 1111 1111 1111"
    );
    let mut r = pseudonym::restorer_for_test(&[], Carrier::Text);
    assert_eq!(
        r.push("<PII_EMAIL_1>"),
        "<PII_EMAIL_1>",
        "an empty mapping restores nothing"
    );
    assert_eq!(r.finish(), "");
    let answer = Scripted::text(&[
        "Sent to <PII_EMAIL_1>",
        " and <PII_EMAIL_2>. Bye <PII_EMAIL_9>",
    ]);
    let out = run(pseudonym::restore(answer, placeholders));
    assert_eq!(
        out,
        "Sent to Anna@corp.ru and bob@corp.ru. Bye <PII_EMAIL_9>"
    );
}

#[test]
fn a_placeholder_split_at_every_position_is_restored() {
    let text = "Hi <PII_EMAIL_1>, call <PII_PHONE_12> now <b>";
    let expected = "Hi anna@corp.ru, call +7 912 345-67-89 now <b>";
    for i in 0..=text.len() {
        for j in i..=text.len() {
            let pieces = [&text[..i], &text[i..j], &text[j..]];
            let mut r = pseudonym::restorer_for_test(
                &[
                    ("<PII_EMAIL_1>", "anna@corp.ru"),
                    ("<PII_PHONE_12>", "+7 912 345-67-89"),
                ],
                Carrier::Text,
            );
            let mut out: String = pieces.iter().map(|p| r.push(p)).collect();
            out.push_str(&r.finish());
            assert_eq!(out, expected, "split at {i}, {j}");
        }
    }
}

#[test]
fn a_value_restored_into_tool_arguments_is_json_escaped() {
    let mut r = pseudonym::restorer_for_test(
        &[("<PII_SECRET_1>", "line1\n\"q\"")],
        Carrier::ToolArguments,
    );
    let mut out = r.push("{\"key\": \"<PII_SEC");
    out.push_str(&r.push("RET_1>\"}"));
    out.push_str(&r.finish());
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["key"], "line1\n\"q\"");
}

#[test]
fn output_redaction_sees_a_value_split_across_steps() {
    let p = Arc::new(pii(&[]));
    let text =
        "Your card 4111 1111 1111 1111 and mail ivan.petrov@mail.ru are saved; IP 192.168.1.20.";
    for cut in 0..=text.len() {
        if !text.is_char_boundary(cut) {
            continue;
        }
        let answer = Scripted::text(&[&text[..cut], &text[cut..]]);
        let out = run(output::redact_answer(answer, p.clone(), Arc::from("t")));
        assert_eq!(
            out, "Your card [CARD] and mail [EMAIL] are saved; IP [IP].",
            "cut at {cut}"
        );
    }
}

#[test]
fn output_redaction_streams_word_by_word_and_keeps_a_long_answer_intact() {
    let p = Arc::new(pii(&[]));
    let words: Vec<String> = (0..400).map(|i| format!("слово{i} ")).collect();
    let mut pieces: Vec<&str> = words.iter().map(String::as_str).collect();
    pieces.insert(200, "token sk-abcdefghijklmnopqrstuvwxyz0123 ");
    let expected: String = pieces
        .concat()
        .replace("sk-abcdefghijklmnopqrstuvwxyz0123", "[SECRET]");
    let out = run(output::redact_answer(
        Scripted::text(&pieces),
        p,
        Arc::from("t"),
    ));
    assert_eq!(out, expected);
}

#[test]
fn output_redaction_covers_tool_call_arguments_split_across_steps() {
    let p = Arc::new(pii(&[]));
    let steps = vec![
        Step::ToolCall {
            choice: 0,
            index: 0,
            id: Some("call_1".into()),
            name: Some("send".into()),
            arguments: "{\"to\": \"ivan.pe".into(),
        },
        Step::ToolCall {
            choice: 0,
            index: 0,
            id: None,
            name: None,
            arguments: "trov@mail.ru\"}".into(),
        },
        Step::Finished {
            choice: 0,
            reason: FinishReason::ToolCalls,
            text: String::new(),
            stop_sequence: None,
        },
    ];
    let mut answer = output::redact_answer(
        Box::new(Scripted {
            steps: steps.into(),
        }),
        p,
        Arc::from("t"),
    );
    let out = futures_util::FutureExt::now_or_never(collect(answer.as_mut()))
        .unwrap()
        .unwrap();
    assert_eq!(out[0].tool_calls[0].arguments, "{\"to\": \"[EMAIL]\"}");
    assert_eq!(out[0].tool_calls[0].name, "send");
    assert_eq!(out[0].finish_reason, Some(FinishReason::ToolCalls));
}

#[test]
fn output_block_masks_and_pseudonymize_lets_the_clients_own_values_through() {
    let p = Arc::new(pii(&[
        (PiiEntity::Card, PiiAction::Block),
        (PiiEntity::Email, PiiAction::Pseudonymize),
    ]));
    let answer = Scripted::text(&["card 4111 1111 1111 1111 for anna@corp.ru"]);
    let out = run(output::redact_answer(answer, p, Arc::from("t")));
    assert_eq!(out, "card [CARD] for anna@corp.ru");
}

#[test]
fn scanning_8_kb_of_mixed_text_finds_every_planted_value() {
    let filler = "Обычный деловой текст о поставке оборудования, без персональных данных. ";
    let mut text = String::new();
    let mut planted = 0;
    while text.len() < 8 * 1024 {
        text.push_str(filler);
        text.push_str("ИНН 7707083893, e-mail a.b@c.ru. ");
        planted += 2;
    }
    assert_eq!(detector().scan(&text).len(), planted);
}

/// An answer that plays back fixed steps.
struct Scripted {
    steps: VecDeque<Step>,
}

impl Scripted {
    fn text(pieces: &[&str]) -> BoxAnswer {
        let mut steps: VecDeque<Step> = pieces
            .iter()
            .map(|p| Step::Token {
                choice: 0,
                text: p.to_string(),
                logprob: None,
                token: None,
            })
            .collect();
        steps.push_back(Step::Finished {
            choice: 0,
            reason: FinishReason::Stop,
            text: String::new(),
            stop_sequence: None,
        });
        Box::new(Self { steps })
    }
}

impl Answer for Scripted {
    fn num_choices(&self) -> usize {
        1
    }
    fn next(&mut self) -> BoxFuture<'_, Option<Step>> {
        let step = self.steps.pop_front();
        Box::pin(async move { step })
    }
    fn usage(&self) -> Usage {
        Usage::default()
    }
}

fn run(mut answer: BoxAnswer) -> String {
    let out = futures_util::FutureExt::now_or_never(collect(answer.as_mut()))
        .unwrap()
        .unwrap();
    out[0].text.clone()
}

#[test]
fn held_answer_passes_failures_through() {
    let steps = vec![
        Step::Token {
            choice: 0,
            text: "a <PII_".into(),
            logprob: None,
            token: None,
        },
        Step::Failed(ApiError::Upstream("gone".into())),
    ];
    let mut answer = HeldAnswer::wrap(
        Box::new(Scripted {
            steps: steps.into(),
        }),
        Box::new(|c: Carrier| pseudonym::restorer_for_test(&[], c)),
    );
    let result = futures_util::FutureExt::now_or_never(collect(answer.as_mut())).unwrap();
    assert!(result.is_err());
}

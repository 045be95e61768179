//! `/v1/responses`: stored, replayed, chained; `store: false`; bad requests; input items.

use super::*;

#[tokio::test]
async fn a_streamed_response_is_stored_identical_replayed_and_chained_at_once() {
    let s = &shared().server;
    let reply = send(
        s,
        "POST",
        "/v1/responses",
        KEY_A,
        Some(turn(
            json!("Name a colour."),
            json!({"stream": true, "metadata": {"run": "1"}}),
        )),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let live = events(&reply.body);
    for (i, e) in live.iter().enumerate() {
        assert_eq!(e["sequence_number"], i as i64, "{e}");
    }
    assert_eq!(live[0]["type"], "response.created");
    let terminal: Vec<&Value> = live
        .iter()
        .filter(|e| {
            matches!(
                e["type"].as_str(),
                Some("response.completed" | "response.incomplete" | "response.failed")
            )
        })
        .collect();
    assert_eq!(terminal.len(), 1);
    assert_eq!(live.last().unwrap(), terminal[0]);
    let done = &terminal[0]["response"];
    let id = done["id"].as_str().unwrap().to_string();
    assert_eq!(live[0]["response"]["id"], id.as_str());
    let deltas: String = live
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert!(!deltas.is_empty());
    assert_eq!(deltas, text_of(done));

    // GET: the same response.
    let got = send(s, "GET", &format!("/v1/responses/{id}"), KEY_A, None).await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(&got.json(), done);
    assert_eq!(got.json()["metadata"]["run"], "1");
    // The stream again, after event 3: the same events.
    let replay = send(
        s,
        "GET",
        &format!("/v1/responses/{id}?stream=true&starting_after=3"),
        KEY_A,
        None,
    )
    .await;
    assert_eq!(replay.status, 200, "{}", replay.body);
    assert_eq!(events(&replay.body), live[4..].to_vec());

    // Chained at once; instructions are not inherited.
    let next = send(
        s,
        "POST",
        "/v1/responses",
        KEY_A,
        Some(turn(
            json!("And another?"),
            json!({"previous_response_id": id}),
        )),
    )
    .await;
    assert_eq!(next.status, 200, "{}", next.body);
    let next = next.json();
    assert_eq!(next["previous_response_id"], id.as_str());
    assert!(next["instructions"].is_null());
    // The chained turn saw the first one: more prompt tokens than alone.
    let alone = send(
        s,
        "POST",
        "/v1/responses",
        KEY_A,
        Some(turn(json!("And another?"), json!({}))),
    )
    .await;
    assert!(
        next["usage"]["input_tokens"].as_u64().unwrap()
            > alone.json()["usage"]["input_tokens"].as_u64().unwrap()
    );

    // Another tenant: 404 for every route, as for an unknown id.
    for (method, path) in [
        ("GET", format!("/v1/responses/{id}")),
        ("GET", format!("/v1/responses/{id}/input_items")),
        ("DELETE", format!("/v1/responses/{id}")),
    ] {
        send(s, method, &path, KEY_B, None).await.expect_error(404);
    }
    send(
        s,
        "POST",
        "/v1/responses",
        KEY_B,
        Some(turn(json!("hi"), json!({"previous_response_id": id}))),
    )
    .await
    .expect_error(404);
}

#[tokio::test]
async fn store_false_leaves_nothing_to_get_or_chain_and_bad_requests_are_400s() {
    let s = &shared().server;
    let reply = send(
        s,
        "POST",
        "/v1/responses",
        KEY_A,
        Some(turn(json!("Hello"), json!({"store": false}))),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let id = reply.json()["id"].as_str().unwrap().to_string();
    send(s, "GET", &format!("/v1/responses/{id}"), KEY_A, None)
        .await
        .expect_error(404);
    send(
        s,
        "POST",
        "/v1/responses",
        KEY_A,
        Some(turn(json!("more"), json!({"previous_response_id": id}))),
    )
    .await
    .expect_error(404);
    // previous_response_id and conversation together.
    let err = send(
        s,
        "POST",
        "/v1/responses",
        KEY_A,
        Some(turn(
            json!("x"),
            json!({"previous_response_id": "resp_1", "conversation": "conv_1"}),
        )),
    )
    .await
    .expect_error(400);
    assert_eq!(err["param"], "conversation");
    for (extra, param) in [
        (json!({"background": true, "store": false}), "background"),
        (json!({"truncation": "sometimes"}), "truncation"),
        (json!({"frobnicate": 1}), "frobnicate"),
    ] {
        let err = send(
            s,
            "POST",
            "/v1/responses",
            KEY_A,
            Some(turn(json!("x"), extra)),
        )
        .await
        .expect_error(400);
        assert_eq!(err["param"], param);
    }
    let err = send(
        s,
        "POST",
        "/v1/responses",
        KEY_A,
        Some(turn(
            json!([{"role": "user", "content": [{"type": "input_image"}]}]),
            json!({}),
        )),
    )
    .await
    .expect_error(400);
    assert_eq!(err["param"], "input[0].content[0].type");
}

#[tokio::test]
async fn input_items_page_with_a_cursor_and_function_calls_are_stored_and_replayed() {
    let s = &shared().server;
    let input = json!([
        {"role": "user", "content": "What is the weather in Oslo?"},
        {"type": "function_call", "call_id": "call_w1", "name": "weather", "arguments": "{\"city\":\"Oslo\"}"},
        {"type": "function_call_output", "call_id": "call_w1", "output": "Sunny, 20 C"},
        {"role": "user", "content": "Say it in one word."},
    ]);
    let reply = send(
        s,
        "POST",
        "/v1/responses",
        KEY_A,
        Some(turn(input, json!({}))),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let id = reply.json()["id"].as_str().unwrap().to_string();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let cursor = after
            .as_ref()
            .map(|a| format!("&after={a}"))
            .unwrap_or_default();
        let page = send(
            s,
            "GET",
            &format!("/v1/responses/{id}/input_items?limit=3&order=asc{cursor}"),
            KEY_A,
            None,
        )
        .await;
        assert_eq!(page.status, 200, "{}", page.body);
        let page = page.json();
        seen.extend(page["data"].as_array().unwrap().clone());
        if page["has_more"] == false {
            break;
        }
        after = Some(page["last_id"].as_str().unwrap().to_string());
    }
    let kinds: Vec<&str> = seen.iter().map(|i| i["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "message",
            "function_call",
            "function_call_output",
            "message"
        ]
    );
    assert_eq!(seen[1]["call_id"], "call_w1");
    assert_eq!(seen[2]["output"], "Sunny, 20 C");
    // Chaining replays them: the model sees the call and its output again.
    let next = send(
        s,
        "POST",
        "/v1/responses",
        KEY_A,
        Some(turn(json!("Thanks"), json!({"previous_response_id": id}))),
    )
    .await;
    assert_eq!(next.status, 200, "{}", next.body);
}

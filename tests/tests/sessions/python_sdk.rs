//! The OpenAI Python SDK's `responses` and `conversations`, unchanged.

use super::*;

#[tokio::test]
async fn the_openai_python_sdk_speaks_responses_and_conversations() {
    let script = r#"
import sys
from openai import OpenAI, NotFoundError
client = OpenAI(base_url=sys.argv[1], api_key=sys.argv[2])
model = sys.argv[3]

r = client.responses.create(model=model, input="Say hi.", max_output_tokens=8, temperature=0,
                            instructions="Be brief.", metadata={"sdk": "yes"})
assert r.status in ("completed", "incomplete"), r.status
assert r.output_text, r
got = client.responses.retrieve(r.id)
assert got.output_text == r.output_text and got.metadata == {"sdk": "yes"}

stream = client.responses.create(model=model, input="Count to three.", max_output_tokens=8,
                                 temperature=0, previous_response_id=r.id, stream=True)
kinds, text, final = [], "", None
for event in stream:
    kinds.append(event.type)
    if event.type == "response.output_text.delta":
        text += event.delta
    if event.type in ("response.completed", "response.incomplete"):
        final = event.response
assert kinds[0] == "response.created", kinds
assert final is not None and final.output_text == text, (final, text)
assert client.responses.retrieve(final.id).output_text == text

items = client.responses.input_items.list(final.id)
assert [i.type for i in items.data] == ["message"], items

client.responses.delete(r.id)
try:
    client.responses.retrieve(r.id)
    raise SystemExit("a deleted response was found")
except NotFoundError:
    pass

conv = client.conversations.create(metadata={"topic": "demo"},
                                   items=[{"type": "message", "role": "user", "content": "Hello!"}])
assert client.conversations.retrieve(conv.id).metadata == {"topic": "demo"}
client.conversations.update(conv.id, metadata={"topic": "changed"})
assert client.conversations.retrieve(conv.id).metadata == {"topic": "changed"}
added = client.conversations.items.create(conv.id, items=[
    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "More"}]}])
assert len(added.data) == 1
listed = client.conversations.items.list(conv.id, order="asc")
assert len(listed.data) == 2, listed
one = client.conversations.items.retrieve(added.data[0].id, conversation_id=conv.id)
assert one.id == added.data[0].id
turn = client.responses.create(model=model, input="And you?", conversation=conv.id,
                               max_output_tokens=8, temperature=0)
assert len(client.conversations.items.list(conv.id).data) == 4
client.conversations.items.delete(added.data[0].id, conversation_id=conv.id)
assert len(client.conversations.items.list(conv.id).data) == 3
client.conversations.delete(conv.id)
try:
    client.conversations.retrieve(conv.id)
    raise SystemExit("a deleted conversation was found")
except NotFoundError:
    pass
print("ok")
"#;
    let base = shared().server.api_base();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg("-c")
            .arg(script)
            .arg(base)
            .arg(KEY_A)
            .arg(DEMO_MODEL_ID)
            .output()
            .expect("python3 with the openai SDK is needed (scripts/python-env.sh; SLUICE_PYTHON)")
    })
    .await
    .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("ok"),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

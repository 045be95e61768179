//! The console's files, embedded in the binary at build time: two HTML
//! pages, one stylesheet and plain JavaScript modules (no framework, no
//! build step, nothing fetched at run time).

/// One embedded file under `/ui/assets/`.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

const JS: &str = "text/javascript; charset=utf-8";

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_bytes!(concat!("assets/", $name)),
        }
    };
}

/// Every file under `/ui/assets/`.
pub const ASSETS: &[Asset] = &[
    asset!("console.css", "text/css; charset=utf-8"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("charts.js", JS),
    asset!("dom.js", JS),
    asset!("overview.js", JS),
    asset!("keys.js", JS),
    asset!("spend.js", JS),
    asset!("audit.js", JS),
    asset!("cache.js", JS),
    asset!("engine.js", JS),
    asset!("playground.js", JS),
];

/// The console's single page (served at `/ui` to a logged-in visitor).
pub const INDEX_HTML: &str = include_str!("assets/index.html");
const LOGIN_HTML: &str = include_str!("assets/login.html");

/// The embedded file called `name`.
pub fn find(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

/// The login page, with `error` shown above the form when given.
pub fn login_html(error: Option<&str>) -> String {
    let shown = error.map_or_else(String::new, |message| {
        format!(r#"<p class="error" role="alert">{}</p>"#, escape(message))
    });
    LOGIN_HTML.replace("<!--error-->", &shown)
}

/// Text made safe to put between HTML tags.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every page and module, as text.
    fn texts() -> Vec<(&'static str, String)> {
        let mut out = vec![
            ("index.html", INDEX_HTML.to_string()),
            ("login.html", LOGIN_HTML.to_string()),
        ];
        for a in ASSETS {
            out.push((a.name, String::from_utf8(a.body.to_vec()).unwrap()));
        }
        out
    }

    #[test]
    fn pages_hold_no_inline_script_style_or_handler() {
        for (name, text) in texts().into_iter().filter(|(n, _)| n.ends_with(".html")) {
            let lower = text.to_ascii_lowercase();
            for (at, _) in lower.match_indices("<script") {
                let tag = &lower[at..at + lower[at..].find('>').unwrap()];
                assert!(tag.contains(" src="), "{name}: inline script {tag}");
            }
            assert!(!lower.contains("<style"), "{name}: inline style element");
            assert!(!lower.contains(" style="), "{name}: inline style attribute");
            assert!(!lower.contains("javascript:"), "{name}: javascript: URL");
            for handler in [
                " onclick=",
                " onload=",
                " onsubmit=",
                " onerror=",
                " oninput=",
            ] {
                assert!(!lower.contains(handler), "{name}: inline handler {handler}");
            }
        }
    }

    #[test]
    fn nothing_is_loaded_from_another_origin() {
        for (name, text) in texts() {
            // The SVG namespace is a name, never fetched.
            let text = text.replace("'http://www.w3.org/2000/svg'", "");
            for needle in ["http://", "https://", "//cdn", "@import"] {
                assert!(!text.contains(needle), "{name} mentions {needle}");
            }
        }
    }

    #[test]
    fn every_module_a_page_or_module_imports_is_embedded() {
        for (name, text) in texts() {
            for part in text.split(['"', '\'']) {
                if let Some(file) = part.strip_prefix("./").or(part.strip_prefix("/ui/assets/")) {
                    if file.ends_with(".js") || file.ends_with(".css") {
                        assert!(find(file).is_some(), "{name} names {file}, not embedded");
                    }
                }
            }
        }
    }

    #[test]
    fn the_login_error_is_escaped() {
        let page = login_html(Some("<img src=x>"));
        assert!(page.contains("&lt;img src=x&gt;"));
        assert!(!page.contains("<img src=x>"));
        assert!(!login_html(None).contains("role=\"alert\""));
    }
}

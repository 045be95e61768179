//! The semantic tier's last word: two questions whose embeddings are close
//! may still ask different things ("Is X safe?" / "Is X not safe?", "in 2023"
//! / "in 2024", "Apple" / "Microsoft"). [`verify`] compares the two user
//! messages' texts on the features embeddings blur, and rejects a candidate
//! that differs in any of them.
//!
//! Design choice: rules over words, not a second model. They are cheap
//! (microseconds), explainable in a log line ([`Mismatch`] names the
//! feature), and err on the side of a miss: a false rejection costs one
//! generation, a false hit serves a wrong answer. English and Russian.
//! Opposite words come from a WordNet lexicon ([`opposites`]); swapped
//! roles ("A sued B" / "B sued A", "from X to Y" / "from Y to X"), units
//! and the person a question is for ("a child" / "an adult") from the
//! word lists and rules below.

mod opposites;

use std::collections::BTreeSet;

/// Why two texts are not the same question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    Negation,
    Numbers,
    Dates,
    Entities,
    Quantifiers,
    Direction,
    Action,
    /// One text has a word the other has the opposite of ("buy" / "sell").
    Opposite,
    /// The same two things in swapped roles ("A sued B" / "B sued A").
    Roles,
    Units,
    /// Asked for another kind of person ("for a child" / "for an adult").
    Scope,
}

impl Mismatch {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Negation => "negation",
            Self::Numbers => "numbers",
            Self::Dates => "dates",
            Self::Entities => "entities",
            Self::Quantifiers => "quantifiers",
            Self::Direction => "direction",
            Self::Action => "action",
            Self::Opposite => "opposite",
            Self::Roles => "roles",
            Self::Units => "units",
            Self::Scope => "scope",
        }
    }
}

#[rustfmt::skip]
const NEGATIONS: &[&str] = &[
    "not", "no", "never", "none", "nobody", "nothing", "neither", "nor", "nowhere", "without",
    "cannot", "isn't", "aren't", "wasn't", "weren't", "don't", "doesn't", "didn't", "won't",
    "wouldn't", "can't", "couldn't", "shouldn't", "mustn't", "haven't", "hasn't", "hadn't",
    "не", "нет", "ни", "никогда", "никто", "ничего", "ничто", "нигде", "без", "нельзя",
];

#[rustfmt::skip]
const QUANTIFIERS: &[&str] = &[
    "all", "some", "any", "every", "each", "only", "most", "many", "few", "several", "both",
    "either", "always", "sometimes", "least", "atleast", "atmost", "majority", "minority",
    "все", "всё", "всех", "всем", "весь", "вся", "некоторые", "некоторых", "каждый", "каждая",
    "каждое", "каждого", "любой", "любая", "любое", "только", "лишь", "большинство",
    "несколько", "многие", "всегда", "иногда", "минимум", "максимум", "хотя",
];

#[rustfmt::skip]
const DIRECTIONS: &[&str] = &[
    "more", "less", "fewer", "greater", "smaller", "larger", "bigger", "higher", "lower",
    "before", "after", "above", "below", "over", "under", "increase", "decrease", "max", "min",
    "maximum", "minimum", "largest", "smallest", "highest", "lowest", "first", "last", "best",
    "worst", "cheapest", "fastest", "slowest", "oldest", "newest", "больше", "меньше", "выше",
    "ниже", "до", "после", "раньше", "позже", "лучший", "худший", "первый", "последний",
    "самый", "cheaper", "faster", "slower", "easier", "harder", "better", "worse", "earlier",
    "later", "longer", "shorter", "older", "younger", "дешевле", "дороже", "быстрее",
    "медленнее", "лучше", "хуже",
];

/// Verbs whose opposites embed close ("install" / "uninstall"). Compared
/// only when both texts name one, so "set up Rust" still matches "install Rust".
#[rustfmt::skip]
const ACTIONS: &[&str] = &[
    "install", "uninstall", "remove", "delete", "create", "add", "encrypt", "decrypt",
    "upload", "download", "start", "stop", "open", "close", "enable", "disable", "buy", "sell",
    "import", "export", "merge", "split", "compress", "decompress", "encode", "decode",
    "login", "logout", "subscribe", "unsubscribe", "lock", "unlock", "summarize", "criticize",
    "translate", "write", "read", "send", "receive",
    "установ", "удал", "созда", "добав", "включ", "выключ", "откры", "закры", "купи",
    "прода", "зашифр", "расшифр", "загруз", "скача",
];

#[rustfmt::skip]
const NUMBER_WORDS: &[&str] = &[
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "twenty", "thirty", "forty", "fifty", "hundred", "thousand", "million",
    "billion", "half", "double", "twice", "dozen", "ноль", "один", "одна", "два", "две", "три",
    "четыре", "пять", "шесть", "семь", "восемь", "девять", "десять", "сто", "тысяча", "тысячи",
    "миллион", "миллиона", "половина", "дважды",
];

#[rustfmt::skip]
const DATE_WORDS: &[&str] = &[
    "january", "february", "march", "april", "may", "june", "july", "august", "september",
    "october", "november", "december", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep",
    "sept", "oct", "nov", "dec", "monday", "tuesday", "wednesday", "thursday", "friday",
    "saturday", "sunday", "today", "tomorrow", "yesterday", "tonight", "week", "month", "year",
    "century", "morning", "evening", "night", "spring", "summer", "autumn", "winter", "январ",
    "феврал", "март", "апрел", "мая", "май", "июн", "июл", "август", "сентябр", "октябр",
    "ноябр", "декабр", "понедельник", "вторник", "сред", "четверг", "пятниц", "суббот",
    "воскресень", "сегодня", "завтра", "вчера", "недел", "месяц", "год", "век", "утр", "вечер",
    "ноч", "весн", "лет", "осен", "зим",
];

/// Units and measures, singular (a trailing "s"/"es" is dropped before
/// the lookup). Compared in order of mention, so "5 miles in km" is not
/// "5 km in miles".
#[rustfmt::skip]
const UNITS: &[&str] = &[
    "gram", "kilogram", "milligram", "microgram", "g", "kg", "mg", "ounce", "oz", "pound", "lb",
    "ton", "tonne", "liter", "litre", "milliliter", "millilitre", "ml", "gallon", "quart", "pint",
    "cup", "tablespoon", "teaspoon", "tbsp", "tsp", "inch", "foot", "feet", "yard", "mile",
    "meter", "metre", "kilometer", "kilometre", "centimeter", "centimetre", "millimeter",
    "millimetre", "km", "cm", "mm", "mph", "kph", "celsius", "fahrenheit", "kelvin", "byte",
    "kilobyte", "megabyte", "gigabyte", "terabyte", "bit", "kb", "mb", "gb", "tb", "watt",
    "kilowatt", "kwh", "volt", "joule", "calorie", "kcal", "acre", "hectare", "second", "minute",
    "hour", "day", "slice", "loaf", "pot", "glass", "bottle", "shot", "pinch", "degree", "percent",
];

/// Russian units by their forms (a prefix would take "метро" for "метр"
/// and "часто" for "час"); the first form names the unit.
#[rustfmt::skip]
const RU_UNITS: &[&[&str]] = &[
    &["грамм", "грамма", "граммов"], &["килограмм", "килограмма", "килограммов", "кг"],
    &["литр", "литра", "литров"], &["миллилитр", "миллилитра", "миллилитров", "мл"],
    &["метр", "метра", "метров"], &["километр", "километра", "километров", "км"],
    &["сантиметр", "сантиметра", "сантиметров", "см"], &["миллиметр", "миллиметра", "миллиметров", "мм"],
    &["чайная", "чайной", "чайную", "чайных"], &["столовая", "столовой", "столовую", "столовых"],
    &["стакан", "стакана", "стаканов", "стакане"], &["час", "часа", "часов"],
    &["минута", "минуты", "минут", "минуту"], &["секунда", "секунды", "секунд", "секунду"],
    &["градус", "градуса", "градусов"], &["процент", "процента", "процентов"],
];

/// Kinds of person a question can be about; two texts naming different
/// ones ask different things. The young of animals count as children
/// ("a kitten" / "an adult cat").
#[rustfmt::skip]
const PERSON_KINDS: &[(&str, &[&str])] = &[
    ("infant", &["baby", "babies", "infant", "infants", "newborn", "newborns", "младен", "новорожд"]),
    ("toddler", &["toddler", "toddlers"]),
    ("child", &["child", "children", "kid", "kids", "puppy", "puppies", "kitten", "kittens",
        "ребен", "ребён", "дети", "детей", "детям", "детьми", "детск", "щенок", "щенк", "котён",
        "котен"]),
    ("teen", &["teen", "teens", "teenager", "teenagers", "adolescent", "adolescents", "подрост"]),
    ("adult", &["adult", "adults", "grownup", "grownups", "взросл"]),
    ("senior", &["senior", "seniors", "elderly", "pensioner", "pensioners", "retiree",
        "retirees", "пожил", "пенсионер"]),
];

/// Words left out when comparing roles: "a cat" and "the cat" are one
/// participant.
#[rustfmt::skip]
const DETERMINERS: &[&str] = &[
    "a", "an", "the", "my", "your", "his", "her", "its", "our", "their", "this", "that",
    "these", "those",
];

/// Connectives that make the order of their two sides irrelevant
/// ("TCP and UDP" / "UDP and TCP").
#[rustfmt::skip]
const SYMMETRIC: &[&str] = &[
    "and", "or", "vs", "versus", "with", "between", "nor", "и", "или", "с",
];

/// Prepositions that mark where something goes from and to.
const SOURCES: &[&str] = &["from", "из", "с", "со", "от"];
const TARGETS: &[&str] = &["to", "into", "в", "во", "на", "до"];

/// Words that start sentences or questions capitalised without naming anything.
#[rustfmt::skip]
const NOT_ENTITIES: &[&str] = &[
    "i", "i'm", "i've", "i'd", "ok", "okay",
];

#[derive(Debug)]
struct Features {
    /// Lowercased words, for "does the other text mention it at all".
    words: Vec<String>,
    /// Lowercased words, unstemmed (the opposites lexicon has its own
    /// rules for word forms).
    plain: Vec<String>,
    negations: usize,
    numbers: BTreeSet<String>,
    dates: BTreeSet<String>,
    entities: BTreeSet<String>,
    /// Entities in order of first mention: "from Paris to London" is not
    /// "from London to Paris".
    entity_order: Vec<String>,
    quantifiers: BTreeSet<String>,
    directions: BTreeSet<String>,
    actions: BTreeSet<String>,
    /// Units in order of first mention.
    units: Vec<&'static str>,
    persons: BTreeSet<&'static str>,
}

fn tokens(text: &str) -> Vec<(String, bool)> {
    // (word, starts a sentence): a capital there says nothing about names.
    let mut out = Vec::new();
    let mut sentence_start = true;
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut Vec<(String, bool)>, start: &mut bool| {
        if !word.is_empty() {
            out.push((std::mem::take(word), *start));
            *start = false;
        }
    };
    for c in text.chars() {
        if c.is_alphanumeric()
            || c == '\''
            || c == '’'
            || (c == '.' && word.chars().all(|d| d.is_ascii_digit()) && !word.is_empty())
        {
            word.push(if c == '’' { '\'' } else { c });
        } else {
            flush(&mut word, &mut out, &mut sentence_start);
            if matches!(c, '.' | '?' | '!' | '\n' | ':' | ';' | '"' | '«' | '(') {
                sentence_start = true;
            }
        }
    }
    flush(&mut word, &mut out, &mut sentence_start);
    // A trailing '.' was taken as a decimal point.
    for (w, _) in &mut out {
        while w.ends_with('.') {
            w.pop();
        }
    }
    out
}

fn stem(word: &str) -> String {
    let w = word.strip_suffix("'s").unwrap_or(word);
    // Russian nouns decline ("Москва", "Москве", "Москвы"); a short prefix
    // keeps the comparison about the name, not its case.
    if w.chars().any(|c| matches!(c, 'а'..='я' | 'ё')) {
        let n = w.chars().count();
        let keep = if n > 5 { n - 2 } else { n.min(4) };
        return w.chars().take(keep).collect();
    }
    w.to_string()
}

fn features(text: &str) -> Features {
    let toks = tokens(text);
    let mut f = Features {
        words: Vec::with_capacity(toks.len()),
        plain: Vec::with_capacity(toks.len()),
        negations: 0,
        numbers: BTreeSet::new(),
        dates: BTreeSet::new(),
        entities: BTreeSet::new(),
        entity_order: Vec::new(),
        quantifiers: BTreeSet::new(),
        directions: BTreeSet::new(),
        actions: BTreeSet::new(),
        units: Vec::new(),
        persons: BTreeSet::new(),
    };
    let mut prev = String::new();
    for (word, at_start) in &toks {
        let lower = word.to_lowercase();
        if NEGATIONS.contains(&lower.as_str()) || lower.ends_with("n't") {
            f.negations += 1;
        }
        if lower.chars().any(|c| c.is_ascii_digit()) {
            f.numbers.insert(lower.trim_start_matches('0').to_string());
        } else if NUMBER_WORDS.contains(&lower.as_str()) {
            f.numbers.insert(lower.clone());
        }
        if DATE_WORDS.iter().any(|d| {
            lower == *d || (d.chars().count() >= 3 && !d.is_ascii() && lower.starts_with(d))
        }) {
            f.dates.insert(stem(&lower));
        }
        if QUANTIFIERS.contains(&lower.as_str()) {
            // "at least" / "at most" are one quantifier.
            let q = if prev == "at" && (lower == "least" || lower == "most") {
                format!("at{lower}")
            } else {
                lower.clone()
            };
            f.quantifiers.insert(q);
        }
        let cyrillic = !lower.is_ascii();
        if let Some(a) = ACTIONS.iter().find(|a| {
            if cyrillic {
                !a.is_ascii() && lower.starts_with(*a)
            } else {
                lower.strip_suffix('s').unwrap_or(&lower) == **a
                    || lower.strip_suffix("ing").is_some_and(|r| r == **a)
            }
        }) {
            f.actions.insert((*a).to_string());
        }
        if DIRECTIONS.contains(&lower.as_str()) {
            f.directions.insert(lower.clone());
        }
        if let Some(u) = unit(&lower) {
            if !f.units.contains(&u) {
                f.units.push(u);
            }
        }
        if let Some((kind, _)) = PERSON_KINDS.iter().find(|(_, words)| {
            words
                .iter()
                .any(|w| lower == *w || (cyrillic && !w.is_ascii() && lower.starts_with(w)))
        }) {
            f.persons.insert(kind);
        }
        let capitalised = word.chars().next().is_some_and(char::is_uppercase);
        let all_caps = word.chars().count() > 1 && word.chars().all(|c| !c.is_lowercase());
        let entity =
            (capitalised && !at_start || all_caps) && !NOT_ENTITIES.contains(&lower.as_str());
        if entity && f.entities.insert(stem(&lower)) {
            f.entity_order.push(stem(&lower));
        }
        f.words.push(stem(&lower));
        f.plain.push(lower.clone());
        prev = lower;
    }
    f
}

fn unit(lower: &str) -> Option<&'static str> {
    if !lower.is_ascii() {
        return RU_UNITS
            .iter()
            .find(|forms| forms.contains(&lower))
            .and_then(|forms| forms.first().copied());
    }
    let singular = [
        Some(lower),
        lower.strip_suffix('s'),
        lower.strip_suffix("es"),
    ];
    let found = UNITS
        .iter()
        .find(|u| u.is_ascii() && singular.contains(&Some(**u)))?;
    // "feet" is "foot": one unit however it is spelt.
    Some(if *found == "feet" { "foot" } else { found })
}

/// The word after `prepositions` (skipping determiners), for each use.
fn after<'a>(words: &'a [String], prepositions: &[&str]) -> Vec<&'a str> {
    let mut out = Vec::new();
    for (i, w) in words.iter().enumerate() {
        if prepositions.contains(&w.as_str()) {
            if let Some(next) = words[i + 1..]
                .iter()
                .find(|x| !DETERMINERS.contains(&x.as_str()))
            {
                out.push(next.as_str());
            }
        }
    }
    out
}

/// "from X to Y" in one text and "from Y to X" in the other.
fn reversed_route(a: &[String], b: &[String]) -> bool {
    let (a_from, a_to) = (after(a, SOURCES), after(a, TARGETS));
    let (b_from, b_to) = (after(b, SOURCES), after(b, TARGETS));
    a_from.iter().any(|x| b_to.contains(x) && !a_to.contains(x))
        && b_from.iter().any(|y| a_to.contains(y) && !b_to.contains(y))
}

/// "u R v" in one text and "v R u" in the other, with the same relation R
/// (one to four words, none of them symmetric like "and"): "Did Apple sue
/// Samsung" / "Did Samsung sue Apple", "convert a string to a list" /
/// "convert a list to a string".
fn swapped_roles(a: &[String], b: &[String]) -> bool {
    let content = |words: &[String]| -> Vec<String> {
        words
            .iter()
            .filter(|w| !DETERMINERS.contains(&w.as_str()))
            .cloned()
            .collect()
    };
    let (a, b) = (content(a), content(b));
    let once = |words: &[String], w: &str| words.iter().filter(|x| *x == w).count() == 1;
    for i in 0..a.len() {
        for j in i + 2..a.len().min(i + 6) {
            let (u, v, relation) = (&a[i], &a[j], &a[i + 1..j]);
            if u == v
                || u.chars().count() < 3
                || v.chars().count() < 3
                || relation.iter().any(|r| SYMMETRIC.contains(&r.as_str()))
                || !once(&a, u)
                || !once(&a, v)
                || !once(&b, u)
                || !once(&b, v)
            {
                continue;
            }
            let (Some(bv), Some(bu)) =
                (b.iter().position(|x| x == v), b.iter().position(|x| x == u))
            else {
                continue;
            };
            if bv < bu && b[bv + 1..bu] == *relation {
                return true;
            }
        }
    }
    false
}

/// Prefixes that turn a word into its opposite ("safe" / "unsafe",
/// "legal" / "illegal", "agree" / "disagree").
const NEGATING_PREFIXES: &[&str] = &["un", "in", "im", "il", "ir", "dis", "non", "non-", "не"];

/// True when a word of `a` is a word of `b` with a negating prefix, and `a`
/// does not also have the bare word ("safe" vs "unsafe"; "safe and unsafe"
/// vs "unsafe and safe" is no negation).
fn negated_by_prefix(a: &Features, b: &Features) -> bool {
    a.words.iter().any(|w| {
        NEGATING_PREFIXES.iter().any(|p| {
            w.strip_prefix(p).is_some_and(|base| {
                base.chars().count() >= 3
                    && b.words.iter().any(|x| x == base)
                    && !a.words.iter().any(|x| x == base)
            })
        })
    })
}

/// `None` when the two texts may be served the same answer.
pub fn verify(asked: &str, stored: &str) -> Option<Mismatch> {
    let a = features(asked);
    let b = features(stored);
    if a.negations != b.negations {
        return Some(Mismatch::Negation);
    }
    if a.numbers != b.numbers {
        return Some(Mismatch::Numbers);
    }
    if a.dates != b.dates {
        return Some(Mismatch::Dates);
    }
    // An entity of one text must be a word of the other: a name at the
    // start of a sentence is capitalised whether or not it is a name.
    let mentions = |entities: &BTreeSet<String>, other: &Features| {
        entities.iter().all(|e| other.words.iter().any(|w| w == e))
    };
    if !mentions(&a.entities, &b) || !mentions(&b.entities, &a) {
        return Some(Mismatch::Entities);
    }
    if a.entity_order.len() >= 2 && a.entities == b.entities && a.entity_order != b.entity_order {
        return Some(Mismatch::Entities);
    }
    if a.quantifiers != b.quantifiers {
        return Some(Mismatch::Quantifiers);
    }
    if a.directions != b.directions {
        return Some(Mismatch::Direction);
    }
    if !a.actions.is_empty() && !b.actions.is_empty() && a.actions != b.actions {
        return Some(Mismatch::Action);
    }
    if !a.units.is_empty() && !b.units.is_empty() && a.units != b.units {
        return Some(Mismatch::Units);
    }
    if !a.persons.is_empty() && !b.persons.is_empty() && a.persons != b.persons {
        return Some(Mismatch::Scope);
    }
    if reversed_route(&a.words, &b.words) || swapped_roles(&a.words, &b.words) {
        return Some(Mismatch::Roles);
    }
    // Last, so that a known opposite ("install" / "uninstall") is named as such.
    if negated_by_prefix(&a, &b) || negated_by_prefix(&b, &a) {
        return Some(Mismatch::Negation);
    }
    // After the prefix rule, so that "safe" / "unsafe" is named a negation.
    if let Some((x, y)) = opposites::find(&a.plain, &b.plain) {
        tracing::debug!(asked = %x, stored = %y, "opposite words");
        return Some(Mismatch::Opposite);
    }
    None
}

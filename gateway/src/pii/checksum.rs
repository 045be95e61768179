//! The check digits of the identifiers the detector recognises. Each
//! function takes ASCII digits only (separators already removed) and says
//! whether the number is well formed; a number that fails is never flagged.

fn digits(s: &str) -> Option<Vec<u32>> {
    s.chars().map(|c| c.to_digit(10)).collect()
}

/// Bank cards: the Luhn sum.
pub fn luhn(number: &str) -> bool {
    let Some(d) = digits(number) else {
        return false;
    };
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            if i % 2 == 1 {
                let y = x * 2;
                if y > 9 {
                    y - 9
                } else {
                    y
                }
            } else {
                x
            }
        })
        .sum();
    !d.is_empty() && sum.is_multiple_of(10)
}

/// A card's issuer prefix (and length) is one a payment system uses: Visa,
/// Mastercard (51–55, 2221–2720), Mir (2200–2204), American Express, JCB,
/// UnionPay, Maestro, Discover, Diners.
pub fn card_prefix(number: &str) -> bool {
    let len = number.len();
    let p = |n: usize| -> u32 { number.get(..n).and_then(|s| s.parse().ok()).unwrap_or(0) };
    match number.as_bytes().first() {
        Some(b'4') => matches!(len, 13 | 16 | 19),
        Some(b'5') => {
            (51..=55).contains(&p(2)) && len == 16
                || matches!(p(2), 50 | 56..=58) && (16..=19).contains(&len)
        }
        Some(b'2') => {
            (2200..=2204).contains(&p(4)) && (16..=19).contains(&len)
                || (2221..=2720).contains(&p(4)) && len == 16
        }
        Some(b'3') => {
            matches!(p(2), 34 | 37) && len == 15
                || (3528..=3589).contains(&p(4)) && (16..=19).contains(&len)
                || matches!(p(2), 36 | 38 | 39) && (14..=19).contains(&len)
                || (300..=305).contains(&p(3)) && (14..=19).contains(&len)
        }
        Some(b'6') => (16..=19).contains(&len),
        _ => false,
    }
}

/// IBAN: the country letters and check digits moved to the end, letters
/// as 10..35, the whole number mod 97 is 1.
pub fn iban(text: &str) -> bool {
    let b = text.as_bytes();
    if !(15..=34).contains(&b.len())
        || !b[..2].iter().all(u8::is_ascii_uppercase)
        || !b[2..4].iter().all(u8::is_ascii_digit)
        || !b
            .iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
    {
        return false;
    }
    let mut rem: u32 = 0;
    for &c in b[4..].iter().chain(&b[..4]) {
        let v = if c.is_ascii_digit() {
            u32::from(c - b'0')
        } else {
            u32::from(c - b'A') + 10
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

fn weighted(d: &[u32], weights: &[u32]) -> u32 {
    d.iter().zip(weights).map(|(a, b)| a * b).sum::<u32>() % 11 % 10
}

/// INN of an organisation (10 digits) or a person (12 digits).
pub fn inn(number: &str) -> bool {
    let Some(d) = digits(number) else {
        return false;
    };
    match d.len() {
        10 => weighted(&d, &[2, 4, 10, 3, 5, 9, 4, 6, 8]) == d[9],
        12 => {
            weighted(&d, &[7, 2, 4, 10, 3, 5, 9, 4, 6, 8]) == d[10]
                && weighted(&d, &[3, 7, 2, 4, 10, 3, 5, 9, 4, 6, 8]) == d[11]
        }
        _ => false,
    }
}

/// SNILS: 9 digits weighted 9..1, then the sum (or 0 for 100 and 101, or
/// the sum mod 101 past 101) as the last two digits. Numbers up to
/// 001-001-998 have no check digits and are not personal numbers.
pub fn snils(number: &str) -> bool {
    let Some(d) = digits(number) else {
        return false;
    };
    if d.len() != 11 {
        return false;
    }
    let body: u32 = d[..9].iter().fold(0, |acc, x| acc * 10 + x);
    if body <= 1_001_998 {
        return false;
    }
    let sum: u32 = d[..9].iter().zip((1..=9).rev()).map(|(a, w)| a * w).sum();
    let check = match sum {
        s if s < 100 => s,
        100 | 101 => 0,
        s => {
            let r = s % 101;
            if r == 100 {
                0
            } else {
                r
            }
        }
    };
    check == d[9] * 10 + d[10]
}

/// OGRN (13 digits: the first 12 mod 11, mod 10) and OGRNIP (15 digits:
/// the first 14 mod 13, mod 10).
pub fn ogrn(number: &str) -> bool {
    let modulus = match number.len() {
        13 => 11,
        15 => 13,
        _ => return false,
    };
    let Some(d) = digits(number) else {
        return false;
    };
    let Ok(body) = number[..number.len() - 1].parse::<u64>() else {
        return false;
    };
    let last = d[d.len() - 1];
    (body % modulus % 10) as u32 == last
}

/// A Russian bank account against its bank's BIK: the account's key digit
/// makes the weighted sum (7, 1, 3 repeated) of the 23 digits — the BIK's
/// last three, or `0` and its 5th–6th for a settlement centre (BIK ending
/// in `000`) and a correspondent account — then the account, a multiple
/// of 10.
pub fn account_with_bik(account: &str, bik: &str) -> bool {
    if account.len() != 20 || bik.len() != 9 {
        return false;
    }
    // A settlement centre's own accounts, and a bank's correspondent
    // account (`301...`) held there, are keyed with the centre's digits.
    let prefix = if bik.ends_with("000") || account.starts_with("301") {
        format!("0{}", &bik[4..6])
    } else {
        bik[6..].to_string()
    };
    let Some(d) = digits(&format!("{prefix}{account}")) else {
        return false;
    };
    let sum: u32 = d
        .iter()
        .zip([7, 1, 3].iter().cycle())
        .map(|(a, w)| a * w % 10)
        .sum();
    sum.is_multiple_of(10)
}

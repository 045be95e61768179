use super::*;

fn params() -> SamplingParams {
    SamplingParams::default()
}

fn run(logits: &[f32], p: &SamplingParams, rng: &mut SeqRng) -> SampledToken {
    sample(&mut logits.to_vec(), p, &[], &[], rng)
}

/// Counts of each id over `n` draws.
fn histogram(logits: &[f32], p: &SamplingParams, n: usize, seed: u64) -> Vec<usize> {
    let mut rng = SeqRng::seeded(seed);
    let mut counts = vec![0; logits.len()];
    for _ in 0..n {
        counts[run(logits, p, &mut rng).id as usize] += 1;
    }
    counts
}

/// A deterministic, bumpy large-vocabulary logit vector.
fn big_logits(vocab: usize, seed: u64) -> Vec<f32> {
    let mut rng = SeqRng::seeded(seed);
    (0..vocab).map(|_| rng.next_f32() * 12.0 - 6.0).collect()
}

#[test]
fn greedy_picks_the_argmax_and_the_lowest_id_on_ties() {
    let mut rng = SeqRng::seeded(0);
    let t = run(&[0.1, 3.0, -2.0, 3.0, 1.0], &params(), &mut rng);
    assert_eq!(t.id, 1);
    assert!(t.top.is_empty());
    // Greedy does not consume randomness.
    assert_eq!(rng, SeqRng::seeded(0));
}

#[test]
fn seeded_sampling_is_reproducible_and_independent_of_other_calls() {
    let logits = big_logits(1000, 1);
    let p = SamplingParams {
        temperature: 1.0,
        ..params()
    };
    let mut a = SeqRng::seeded(42);
    let alone: Vec<u32> = (0..50).map(|_| run(&logits, &p, &mut a).id).collect();

    let mut b = SeqRng::seeded(42);
    let mut other = SeqRng::seeded(43);
    let interleaved: Vec<u32> = (0..50)
        .map(|_| {
            run(&logits, &p, &mut other);
            run(&logits, &p, &mut b).id
        })
        .collect();
    assert_eq!(alone, interleaved);
    let mut c = SeqRng::seeded(43);
    let different: Vec<u32> = (0..50).map(|_| run(&logits, &p, &mut c).id).collect();
    assert_ne!(alone, different);
}

#[test]
fn temperature_sampling_follows_the_softmax() {
    // Probabilities 1/6, 2/6, 3/6.
    let logits = [0.0, 2f32.ln(), 3f32.ln()];
    let p = SamplingParams {
        temperature: 1.0,
        ..params()
    };
    let n = 60_000;
    let counts = histogram(&logits, &p, n, 5);
    for (c, want) in counts.iter().zip([1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0]) {
        let got = *c as f64 / n as f64;
        assert!((got - want).abs() < 0.01, "{counts:?}");
    }
    // Temperature 2 flattens: probabilities ∝ sqrt(1, 2, 3).
    let p = SamplingParams {
        temperature: 2.0,
        ..params()
    };
    let counts = histogram(&logits, &p, n, 6);
    let z = 1.0 + 2f64.sqrt() + 3f64.sqrt();
    let got = counts[0] as f64 / n as f64;
    assert!((got - 1.0 / z).abs() < 0.01, "{counts:?}");
}

#[test]
fn top_k_1_equals_greedy() {
    let logits = big_logits(50_000, 2);
    let greedy = run(&logits, &params(), &mut SeqRng::seeded(0)).id;
    let p = SamplingParams {
        temperature: 1.5,
        top_k: 1,
        ..params()
    };
    for seed in 0..20 {
        assert_eq!(run(&logits, &p, &mut SeqRng::seeded(seed)).id, greedy);
    }
}

#[test]
fn tiny_top_p_equals_greedy() {
    let logits = big_logits(50_000, 3);
    let greedy = run(&logits, &params(), &mut SeqRng::seeded(0)).id;
    let p = SamplingParams {
        temperature: 1.5,
        top_p: 1e-6,
        ..params()
    };
    for seed in 0..20 {
        assert_eq!(run(&logits, &p, &mut SeqRng::seeded(seed)).id, greedy);
    }
}

#[test]
fn top_k_keeps_only_the_k_best() {
    let logits = [1.0, 4.0, 3.0, 0.0, 3.5];
    let p = SamplingParams {
        temperature: 1.0,
        top_k: 2,
        ..params()
    };
    let counts = histogram(&logits, &p, 5000, 7);
    assert_eq!((counts[0], counts[2], counts[3]), (0, 0, 0), "{counts:?}");
    assert!(counts[1] > 0 && counts[4] > 0);
}

#[test]
fn top_p_keeps_the_smallest_set_reaching_p() {
    // Probabilities 0.5, 0.3, 0.2.
    let logits = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
    let p = SamplingParams {
        temperature: 1.0,
        top_p: 0.75,
        ..params()
    };
    let counts = histogram(&logits, &p, 5000, 8);
    assert_eq!(counts[2], 0, "{counts:?}");
    let share0 = counts[0] as f64 / 5000.0;
    assert!((share0 - 0.5 / 0.8).abs() < 0.03, "{counts:?}");

    // With top-k first, top-p renormalises over the k survivors.
    let p = SamplingParams {
        temperature: 1.0,
        top_k: 2,
        top_p: 0.6,
        ..params()
    };
    let counts = histogram(&logits, &p, 2000, 9);
    assert_eq!((counts[1], counts[2]), (0, 0), "{counts:?}");
}

#[test]
fn top_p_beyond_the_first_candidates_covers_a_flat_vocabulary() {
    // All equal: the nucleus is the lowest half of the ids, far more
    // than the first try of a few hundred candidates.
    let logits = vec![0.0f32; 20_000];
    let p = SamplingParams {
        temperature: 1.0,
        top_p: 0.5,
        ..params()
    };
    let mut rng = SeqRng::seeded(10);
    let ids: Vec<u32> = (0..30).map(|_| run(&logits, &p, &mut rng).id).collect();
    assert!(ids.iter().all(|&id| id < 10_000), "{ids:?}");
    assert!(ids.iter().any(|&id| id > 2_048), "{ids:?}");
}

#[test]
fn min_p_drops_tokens_below_the_fraction_of_the_best() {
    // Probabilities 0.6, 0.3, 0.1; min_p 0.25 -> threshold 0.15.
    let logits = [0.6f32.ln(), 0.3f32.ln(), 0.1f32.ln()];
    let p = SamplingParams {
        temperature: 1.0,
        min_p: 0.25,
        ..params()
    };
    let counts = histogram(&logits, &p, 5000, 11);
    assert_eq!(counts[2], 0, "{counts:?}");
    assert!(counts[1] > 1000, "{counts:?}");
}

#[test]
fn repetition_penalty_covers_prompt_and_output_and_changes_the_ranking() {
    let p = SamplingParams {
        repetition_penalty: 1.5,
        ..params()
    };
    let mut logits = vec![3.0, 2.5, -1.0, 0.5];
    // Token 0 twice (penalised once), token 2 in the prompt, 99 is out of
    // the vocabulary and ignored.
    let t = sample(&mut logits, &p, &[2, 99], &[0, 0], &mut SeqRng::seeded(0));
    assert_eq!(t.id, 1);
    assert_eq!(logits, vec![2.0, 2.5, -1.5, 0.5]);
}

#[test]
fn presence_and_frequency_penalties_count_the_output_only() {
    let p = SamplingParams {
        presence_penalty: 0.5,
        frequency_penalty: 0.25,
        ..params()
    };
    let mut logits = vec![3.0, 2.9, 1.0, 0.0];
    let t = sample(
        &mut logits,
        &p,
        &[1, 1, 1],
        &[0, 0, 2],
        &mut SeqRng::seeded(0),
    );
    assert_eq!(logits, vec![2.0, 2.9, 0.25, 0.0]);
    assert_eq!(t.id, 1);
}

#[test]
fn logprobs_are_a_distribution_over_raw_logits_best_first() {
    let logits = [1.0, 3.0, 2.0, -1.0, 2.0];
    let p = SamplingParams {
        temperature: 3.0,
        top_k: 2,
        logprobs: Some(5),
        ..params()
    };
    let t = run(&logits, &p, &mut SeqRng::seeded(3));
    let ids: Vec<u32> = t.top.iter().map(|&(i, _)| i).collect();
    assert_eq!(ids, vec![1, 2, 4, 0, 3]);
    let mass: f32 = t.top.iter().map(|&(_, l)| l.exp()).sum();
    assert!((mass - 1.0).abs() < 1e-5, "{mass}");
    // Before temperature: the softmax of the logits as given.
    let z: f32 = logits.iter().map(|l| l.exp()).sum();
    assert!((t.top[0].1 - (3f32.exp() / z).ln()).abs() < 1e-5);
    let chosen = t.top.iter().find(|&&(i, _)| i == t.id).unwrap();
    assert_eq!(chosen.1, t.logprob);

    let p = SamplingParams {
        logprobs: Some(2),
        ..params()
    };
    let t = run(&logits, &p, &mut SeqRng::seeded(3));
    assert_eq!(
        t.top.iter().map(|&(i, _)| i).collect::<Vec<_>>(),
        vec![1, 2]
    );
    let p = SamplingParams {
        logprobs: None,
        ..params()
    };
    let t = run(&logits, &p, &mut SeqRng::seeded(3));
    assert!(t.top.is_empty());
    assert!(t.logprob.is_nan(), "not asked for, not computed");
    let p = SamplingParams {
        logprobs: Some(0),
        ..params()
    };
    let t = run(&logits, &p, &mut SeqRng::seeded(3));
    assert!(t.top.is_empty());
    assert!((t.logprob - (3f32.exp() / z).ln()).abs() < 1e-5);
}

#[test]
fn logprobs_over_a_large_vocabulary_sum_to_one() {
    let logits = big_logits(150_000, 12);
    let p = SamplingParams {
        logprobs: Some(150_000),
        ..params()
    };
    let t = run(&logits, &p, &mut SeqRng::seeded(0));
    let mass: f64 = t.top.iter().map(|&(_, l)| (l as f64).exp()).sum();
    assert!((mass - 1.0).abs() < 1e-3, "{mass}");
    assert!(t.top.windows(2).all(|w| w[0].1 >= w[1].1));
    assert_eq!(t.top[0].0, t.id);
}

#[test]
fn small_and_large_selections_agree() {
    let mut logits = big_logits(20_000, 13);
    // Plant ties to check the id order.
    logits[10] = 9.0;
    logits[5] = 9.0;
    logits[7_000] = 9.0;
    let small = top_n(&logits, SMALL_SELECTION);
    let large = top_n(&logits, SMALL_SELECTION + 1);
    assert_eq!(&large[..SMALL_SELECTION], &small[..]);
    assert_eq!(&small[..3], &[5, 10, 7_000]);
}

#[test]
fn truncated_sampling_on_a_large_vocabulary_stays_in_the_allowed_set() {
    let logits = big_logits(150_000, 14);
    let allowed = top_n(&logits, 40);
    let p = SamplingParams {
        temperature: 0.8,
        top_k: 40,
        top_p: 0.9,
        min_p: 0.05,
        ..params()
    };
    let mut rng = SeqRng::seeded(15);
    for _ in 0..50 {
        let id = run(&logits, &p, &mut rng).id as usize;
        assert!(allowed.contains(&id));
    }
}

#[test]
fn nan_and_empty_logits_do_not_fail() {
    let p = SamplingParams {
        temperature: 1.0,
        ..params()
    };
    let t = run(&[f32::NAN, 1.0, f32::NAN], &p, &mut SeqRng::seeded(0));
    assert_eq!(t.id, 1);
    let t = run(&[], &p, &mut SeqRng::seeded(0));
    assert_eq!(t.logprob, f32::NEG_INFINITY);
    let t = run(&[f32::NEG_INFINITY; 3], &p, &mut SeqRng::seeded(0));
    assert_eq!(t.id, 0);
}

#[test]
fn only_rows_without_penalties_bias_or_logprobs_may_be_sampled_off_the_host() {
    let rng = SeqRng::seeded(1);
    assert!(off_host_rules(&params(), &rng).is_some());
    let host_only = [
        SamplingParams {
            repetition_penalty: 1.1,
            ..params()
        },
        SamplingParams {
            presence_penalty: 0.5,
            ..params()
        },
        SamplingParams {
            frequency_penalty: -0.5,
            ..params()
        },
        SamplingParams {
            logit_bias: vec![(3, -100.0)],
            ..params()
        },
        SamplingParams {
            logprobs: Some(0),
            ..params()
        },
    ];
    for p in host_only {
        assert_eq!(off_host_rules(&p, &rng), None, "{p:?}");
    }
    // Greedy rules carry no draw; sampled ones the generator's next one,
    // without advancing it.
    let mut copy = rng.clone();
    let hot = SamplingParams {
        temperature: 0.7,
        top_k: 5000,
        ..params()
    };
    let rules = off_host_rules(&hot, &rng).unwrap();
    assert_eq!(rules.uniform, copy.next_f32());
    assert_eq!(rules.top_k, 5000);
    assert_eq!(off_host_rules(&params(), &rng).unwrap().uniform, 0.0);
    assert_eq!(rng, SeqRng::seeded(1));
}

/// The device's rules (the CUDA kernel's twin), fed the draw the host would
/// take, pick the host sampler's token on real-sized vocabularies, row
/// after row of one seeded stream; rows the device hands back are the only
/// exceptions, and they are few.
#[test]
fn the_kernel_rules_with_the_peeked_draw_pick_what_sample_picks() {
    use sluice_kernels::cuda_twin::{sample as twin_sample, SampleShape, HOST_SAMPLES};
    let settings = [
        SamplingParams::default(),
        SamplingParams {
            temperature: 1.0,
            ..params()
        },
        SamplingParams {
            temperature: 0.8,
            top_p: 0.9,
            ..params()
        },
        SamplingParams {
            temperature: 1.2,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.02,
            ..params()
        },
        SamplingParams {
            temperature: 0.5,
            min_p: 0.1,
            ..params()
        },
    ];
    let (mut handed_back, mut compared) = (0, 0);
    for vocab in [1000, 32_000, 151_936] {
        for (s, p) in settings.iter().enumerate() {
            let mut host_rng = SeqRng::seeded(vocab as u64 + s as u64);
            let mut device_rng = host_rng.clone();
            for row in 0..6u64 {
                // Peaked logits, like a model's: a few strong tokens; the
                // last two rows only mildly, so that the tail is drawn from
                // and a wide nucleus is handed back.
                let mut logits = big_logits(vocab, row * 7 + s as u64);
                for (i, l) in logits.iter_mut().enumerate().take(8) {
                    *l = if row < 4 {
                        20.0 - i as f32
                    } else {
                        *l + 10.0 - i as f32
                    };
                }
                compared += 1;
                let want = run(&logits, p, &mut host_rng).id;
                let rules = off_host_rules(p, &device_rng).unwrap();
                let mut id = [0i32];
                let shape = SampleShape { rows: 1, vocab };
                twin_sample(&shape, &logits, &[rules], &mut id).unwrap();
                if id[0] == HOST_SAMPLES {
                    handed_back += 1;
                    run(&logits, p, &mut device_rng);
                    continue;
                }
                if !is_greedy(p) {
                    device_rng.next_f32();
                }
                assert_eq!(id[0] as u32, want, "vocab {vocab}, {p:?}, row {row}");
                assert_eq!(device_rng, host_rng);
            }
        }
    }
    // Only top-p without top-k over a wide nucleus: the mild rows of one
    // setting, on the two vocabularies above the candidate limit.
    assert!(
        handed_back <= 4,
        "{handed_back} of {compared} rows handed back"
    );
}

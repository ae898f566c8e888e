//! The reference evaluator (`somastack-agent evaluate`, docs/agent.md,
//! docs/evaluation.schema.json): before an Installation's upgrade takes
//! traffic, the operator runs it against the candidate revision (behind a
//! preview Service) and the baseline (the revision still serving). It asks
//! both to summarize every document of a corpus and judges the candidate's
//! answers: all answered, extractive, short enough, in agreement with the
//! baseline (or with fixed expectations), fast enough. Its report is one
//! JSON object; any evaluator that writes the same object (an LLM-backed
//! one, say) can replace it.
//!
//! Settings and judging are here, as pure functions; the requests are the
//! binary's.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{MAX_SENTENCES, sentences, truncate};

/// A corpus on which the `lead` method (a regressed release) disagrees
/// clearly with the `scored` one: at the default two sentences, the two
/// methods share no sentence of any document (agreement 0.00), while a
/// release compared with itself agrees fully (1.00). Documents are separated
/// by lines that are exactly `---`, as the gate's `corpus` input.
pub const EVAL_CORPUS: &str = "\
Every tenant signs a contract before onboarding. Lawyers reviewed those terms last spring. \
Residency rules keep customer data inside the region the customer chose. \
The operator places residency workloads only on nodes in the allowed region. \
A workload outside its region breaks residency, so the operator stops it.
---
Teams rehearse failures on quiet afternoons. Nobody enjoys a pager at midnight. \
A drill stops a node on schedule and checks that the workload recovers. \
Each drill records how long recovery took and whether the workload kept serving. \
When a drill fails, the operator reports which workload did not recover.
---
Engineers wrote the first prototype during a hackathon. It ran on one laptop under a desk. \
An agent task runs as a job with its input and the outputs of its dependencies. \
The agent summarizes its task input and writes the summary as its result. \
A reviewer agent accepts a task result only when every sentence comes from the task input.
";

/// How long the evaluator waits by default for a first TCP connection to
/// the baseline and to the candidate before it sends anything (input
/// `connectSeconds`, 0 to 300).
pub const DEFAULT_CONNECT_SECONDS: u64 = 30;

/// The defaults of the gate's inputs.
pub const DEFAULT_MAX_SENTENCES: usize = 2;
pub const DEFAULT_MIN_AGREEMENT: f64 = 0.8;
pub const DEFAULT_MAX_LATENCY_MS: u64 = 5000;
pub const DEFAULT_REQUEST_TIMEOUT_SECONDS: u64 = 30;
/// The most a request's timeout may be.
pub const MAX_REQUEST_TIMEOUT_SECONDS: u64 = 600;
/// The most a report may hold: the kubelet keeps 4096 bytes of a
/// termination message; this leaves room.
pub const MAX_REPORT_BYTES: usize = 4000;
/// The most a report's summary may hold, in characters.
pub const MAX_SUMMARY_CHARS: usize = 200;

/// The inputs this evaluator reads (`SOMASTACK_GATE_INPUTS`).
const KNOWN_INPUTS: [&str; 7] = [
    "corpus",
    "connectSeconds",
    "maxSentences",
    "minAgreement",
    "expected",
    "maxLatencyMs",
    "requestTimeoutSeconds",
];

/// What the candidate is compared with.
#[derive(Debug, Clone, PartialEq)]
pub enum Reference {
    /// The previous revision, still serving: it is asked the same.
    Baseline(SocketAddr),
    /// Fixed expectations: one summary per document, as sentences.
    Expected(Vec<Vec<String>>),
}

/// Everything an evaluation needs, from the environment.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub candidate: SocketAddr,
    pub reference: Reference,
    pub documents: Vec<String>,
    pub max_sentences: usize,
    pub min_agreement: f64,
    pub max_latency: Duration,
    pub request_timeout: Duration,
    /// How long to wait for a first connection to each end.
    pub connect_wait: Duration,
    /// Inputs given that this evaluator does not read.
    pub ignored: Vec<String>,
    /// `SOMASTACK_INSTALLATION`, `SOMASTACK_GATE_REVISION` and
    /// `SOMASTACK_GATE_BASELINE_REVISION`, for the report.
    pub installation: Option<String>,
    pub revision: Option<String>,
    pub baseline_revision: Option<String>,
}

/// A base URL `http://IP:PORT` (a trailing `/` allowed): its address. Names
/// are refused: a pod here has no resolver.
pub fn parse_base_url(var: &str, text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    let rest = text
        .strip_prefix("http://")
        .ok_or_else(|| format!("{var}={text:?} is not a base URL http://IP:PORT"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    rest.parse().map_err(|_| {
        format!("{var}={text:?} is not a base URL http://IP:PORT (an IP address and a port: no names)")
    })
}

/// Documents (or expected summaries) separated by lines that are `---`,
/// each trimmed; none may be empty.
pub fn split_documents(what: &str, text: &str) -> Result<Vec<String>, String> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line.trim() == "---" {
            docs.push(String::new());
        } else if let Some(doc) = docs.last_mut() {
            doc.push_str(line);
            doc.push('\n');
        }
    }
    let docs: Vec<String> = docs.iter().map(|d| d.trim().to_string()).collect();
    if let Some(i) = docs.iter().position(String::is_empty) {
        return Err(if docs.len() == 1 {
            format!("{what} is empty")
        } else {
            format!("{what}: part {} of {} is empty", i + 1, docs.len())
        });
    }
    Ok(docs)
}

/// The sentences of an expected summary: one a line.
fn expected_sentences(summary: &str) -> Vec<String> {
    summary
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

fn number<T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy>(
    inputs: &BTreeMap<String, String>,
    key: &str,
    default: T,
    range: (T, T),
    kind: &str,
) -> Result<T, String> {
    let Some(text) = inputs.get(key) else {
        return Ok(default);
    };
    text.trim()
        .parse::<T>()
        .ok()
        .filter(|v| *v >= range.0 && *v <= range.1)
        .ok_or_else(|| {
            format!(
                "input {key}={text:?} is not {kind} from {} to {}",
                range.0, range.1
            )
        })
}

impl Settings {
    /// From the environment the operator gives the evaluation Job, `var`
    /// giving a variable's value.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Settings, String> {
        let set = |k: &str| var(k).filter(|v| !v.trim().is_empty());
        let candidate = set("SOMASTACK_GATE_CANDIDATE")
            .ok_or("SOMASTACK_GATE_CANDIDATE (the candidate's base URL) is not set")?;
        let candidate = parse_base_url("SOMASTACK_GATE_CANDIDATE", &candidate)?;
        let baseline = set("SOMASTACK_GATE_BASELINE")
            .map(|b| parse_base_url("SOMASTACK_GATE_BASELINE", &b))
            .transpose()?;
        let inputs = parse_inputs(&set("SOMASTACK_GATE_INPUTS").unwrap_or_else(|| "{}".into()))?;
        let corpus = inputs
            .get("corpus")
            .ok_or("input corpus (documents separated by --- lines) is not given")?;
        let documents = split_documents("input corpus", corpus)?;
        let max_sentences = number(
            &inputs,
            "maxSentences",
            DEFAULT_MAX_SENTENCES,
            (1, MAX_SENTENCES),
            "a whole number",
        )?;
        let min_agreement = number(
            &inputs,
            "minAgreement",
            DEFAULT_MIN_AGREEMENT,
            (0.0, 1.0),
            "a number",
        )?;
        let max_latency_ms = number(
            &inputs,
            "maxLatencyMs",
            DEFAULT_MAX_LATENCY_MS,
            (1, MAX_REQUEST_TIMEOUT_SECONDS * 1000),
            "a whole number",
        )?;
        let timeout = number(
            &inputs,
            "requestTimeoutSeconds",
            DEFAULT_REQUEST_TIMEOUT_SECONDS,
            (1, MAX_REQUEST_TIMEOUT_SECONDS),
            "a whole number",
        )?;
        let connect = number(
            &inputs,
            "connectSeconds",
            DEFAULT_CONNECT_SECONDS,
            (0, 300),
            "a whole number",
        )?;
        let mut ignored: Vec<String> = inputs
            .keys()
            .filter(|k| !KNOWN_INPUTS.contains(&k.as_str()))
            .cloned()
            .collect();
        let reference = match baseline {
            Some(addr) => {
                if inputs.contains_key("expected") {
                    ignored.push("expected".into());
                }
                Reference::Baseline(addr)
            }
            None => {
                let expected = inputs.get("expected").ok_or(
                    "without SOMASTACK_GATE_BASELINE, input expected (one summary per document) is required",
                )?;
                let expected = split_documents("input expected", expected)?;
                if expected.len() != documents.len() {
                    return Err(format!(
                        "input expected has {} summaries for {} documents",
                        expected.len(),
                        documents.len()
                    ));
                }
                Reference::Expected(expected.iter().map(|s| expected_sentences(s)).collect())
            }
        };
        Ok(Settings {
            candidate,
            reference,
            documents,
            max_sentences,
            min_agreement,
            max_latency: Duration::from_millis(max_latency_ms),
            request_timeout: Duration::from_secs(timeout),
            connect_wait: Duration::from_secs(connect),
            ignored,
            installation: set("SOMASTACK_INSTALLATION"),
            revision: set("SOMASTACK_GATE_REVISION"),
            baseline_revision: set("SOMASTACK_GATE_BASELINE_REVISION"),
        })
    }
}

/// `SOMASTACK_GATE_INPUTS`: a JSON object of strings (numbers and booleans
/// are taken as they are written).
fn parse_inputs(text: &str) -> Result<BTreeMap<String, String>, String> {
    let bad = |why: String| format!("SOMASTACK_GATE_INPUTS is not a JSON object of strings: {why}");
    let map: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    map.into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => Ok((k, s)),
            serde_json::Value::Number(_) | serde_json::Value::Bool(_) => Ok((k, v.to_string())),
            _ => Err(bad(format!("{k} is not a string"))),
        })
        .collect()
}

/// The body of a summarization request.
pub fn request_body(document: &str, max_sentences: usize) -> Vec<u8> {
    serde_json::json!({ "text": document, "maxSentences": max_sentences })
        .to_string()
        .into_bytes()
}

/// The summary in an answer to `POST /v1/summarize`: its `sentences`, or
/// its `summary` split into sentences; an error unless the status is 200
/// and the summary is not empty.
pub fn summary_of(status: u16, body: &[u8]) -> Result<Vec<String>, String> {
    if status != 200 {
        let text = String::from_utf8_lossy(body);
        return Err(format!("HTTP {status}: {}", truncate(text.trim(), 200)));
    }
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the answer is not JSON: {e}"))?;
    let listed = value.get("sentences").and_then(|s| s.as_array()).map(|list| {
        list.iter()
            .filter_map(|s| s.as_str())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
    });
    let out = match (listed, value.get("summary").and_then(|s| s.as_str())) {
        (Some(list), _) => list,
        (None, Some(summary)) => sentences(summary).into_iter().map(str::to_string).collect(),
        (None, None) => return Err("the answer has no summary".into()),
    };
    if out.is_empty() {
        return Err("the summary is empty".into());
    }
    Ok(out)
}

/// The F1 score of two summaries as sets of sentences: 1 when they have the
/// same sentences, 0 when they share none (two empty summaries agree).
pub fn f1(a: &[String], b: &[String]) -> f64 {
    let a: BTreeSet<&str> = a.iter().map(|s| s.trim()).collect();
    let b: BTreeSet<&str> = b.iter().map(|s| s.trim()).collect();
    if a.is_empty() && b.is_empty() {
        return 1.0;
    }
    let common = a.intersection(&b).count();
    2.0 * common as f64 / (a.len() + b.len()) as f64
}

/// What the candidate answered for one document.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// A summary, and how long the answer took.
    Summary { sentences: Vec<String>, took: Duration },
    /// No summary, and why.
    Failed(String),
}

/// Pass or Fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    Pass,
    Fail,
}

/// One check of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

/// The evaluator's report, the contract's one JSON object
/// (docs/evaluation.schema.json).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Report {
    pub verdict: Verdict,
    pub summary: String,
    pub checks: Vec<Check>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_revision: Option<String>,
}

/// `a` with two decimals, or four when two would show it equal to `b`
/// though it is not (0.7951 is not 0.80).
fn figure(a: f64, b: f64) -> String {
    let (fa, fb) = (format!("{a:.2}"), format!("{b:.2}"));
    if fa == fb && a != b { format!("{a:.4}") } else { fa }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Judges the candidate's answers (one per document, in order) against the
/// reference summaries (the baseline's answers, or the expected ones).
pub fn judge(settings: &Settings, answers: &[Answer], reference: &[Vec<String>]) -> Report {
    let n = settings.documents.len();
    let docs = plural(n, "document", "documents");
    let against = match settings.reference {
        Reference::Baseline(_) => "the baseline",
        Reference::Expected(_) => "the expected summaries",
    };
    let summaries: Vec<(usize, &Vec<String>, Duration)> = answers
        .iter()
        .enumerate()
        .filter_map(|(i, a)| match a {
            Answer::Summary { sentences, took } => Some((i, sentences, *took)),
            Answer::Failed(_) => None,
        })
        .collect();
    // (check, the phrase the summary line uses when it failed)
    let mut checks: Vec<(Check, String)> = Vec::new();
    let check = |name: &str, passed: bool, detail: String| Check {
        name: name.into(),
        passed,
        detail,
    };

    let failed: Vec<(usize, &String)> = answers
        .iter()
        .enumerate()
        .filter_map(|(i, a)| match a {
            Answer::Failed(why) => Some((i, why)),
            Answer::Summary { .. } => None,
        })
        .collect();
    checks.push(match failed.first() {
        None => (
            check(
                "answers",
                true,
                format!("the candidate answered all {docs} with a summary"),
            ),
            String::new(),
        ),
        Some((i, why)) => (
            check(
                "answers",
                false,
                format!(
                    "{} of {n} got no summary; the first, document {}: {why}",
                    failed.len(),
                    i + 1
                ),
            ),
            format!("{} of {docs} not answered", failed.len()),
        ),
    });

    let nothing = "no summary of the candidate to check".to_string();
    let invented: Vec<(usize, &String)> = summaries
        .iter()
        .flat_map(|(i, s, _)| {
            let known = sentences(&settings.documents[*i]);
            s.iter()
                .filter(move |x| !known.contains(&x.trim()))
                .map(move |x| (*i, x))
        })
        .collect();
    checks.push(match invented.first() {
        _ if summaries.is_empty() => (check("extractive", false, nothing.clone()), nothing.clone()),
        None => (
            check(
                "extractive",
                true,
                "every sentence of the candidate's summaries is a sentence of its document".into(),
            ),
            String::new(),
        ),
        Some((i, s)) => (
            check(
                "extractive",
                false,
                format!(
                    "{} not in {} document; the first, document {}: {:?}",
                    plural(invented.len(), "sentence is", "sentences are"),
                    if invented.len() == 1 { "its" } else { "their" },
                    i + 1,
                    truncate(s, 100)
                ),
            ),
            format!(
                "{} not extractive",
                plural(invented.len(), "sentence", "sentences")
            ),
        ),
    });

    let max = settings.max_sentences;
    let long: Vec<(usize, usize)> = summaries
        .iter()
        .filter(|(_, s, _)| s.len() > max)
        .map(|(i, s, _)| (*i, s.len()))
        .collect();
    checks.push(match long.first() {
        _ if summaries.is_empty() => (check("length", false, nothing.clone()), nothing.clone()),
        None => (
            check(
                "length",
                true,
                format!("every summary has at most maxSentences {max} sentences"),
            ),
            String::new(),
        ),
        Some((i, len)) => (
            check(
                "length",
                false,
                format!(
                    "{} over maxSentences {max}; the first, document {}, has {len}",
                    plural(long.len(), "summary is", "summaries are"),
                    i + 1
                ),
            ),
            format!(
                "{} over {max} sentences",
                plural(long.len(), "summary", "summaries")
            ),
        ),
    });

    let scores: Vec<f64> = (0..n)
        .map(|i| match (answers.get(i), reference.get(i)) {
            (Some(Answer::Summary { sentences, .. }), Some(r)) => f1(sentences, r),
            _ => 0.0,
        })
        .collect();
    let agreement = if n == 0 {
        0.0
    } else {
        scores.iter().sum::<f64>() / n as f64
    };
    let min = settings.min_agreement;
    let (shown, threshold) = (figure(agreement, min), format!("{min:.2}"));
    let per_doc: Vec<String> = scores.iter().map(|s| format!("{s:.2}")).collect();
    let agreed = agreement >= min;
    checks.push((
        check(
            "agreement",
            agreed,
            format!(
                "mean sentence F1 {shown} with {against} over {docs} ({}), {} {threshold}",
                per_doc.join(", "),
                if agreed { "at least" } else { "below" }
            ),
        ),
        format!("agreement {shown} < {threshold} with {against} on {docs}"),
    ));

    let slowest = summaries.iter().map(|(_, _, t)| *t).max();
    let limit_ms = settings.max_latency.as_millis();
    checks.push(match slowest {
        None => (check("latency", false, nothing.clone()), nothing),
        Some(t) => {
            let ms = t.as_millis();
            let ok = t <= settings.max_latency;
            (
                check(
                    "latency",
                    ok,
                    format!(
                        "slowest answer {ms} ms, {} {limit_ms} ms",
                        if ok { "within" } else { "over" }
                    ),
                ),
                format!("slowest answer {ms} ms > {limit_ms} ms"),
            )
        }
    });

    let failing: Vec<&str> = checks
        .iter()
        .filter(|(c, _)| !c.passed)
        .map(|(_, p)| p.as_str())
        .collect();
    let verdict = if failing.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail
    };
    let mut summary = if failing.is_empty() {
        format!(
            "all {} checks passed on {docs}: agreement {shown} with {against}, slowest answer {} ms",
            checks.len(),
            slowest.map(|t| t.as_millis()).unwrap_or_default()
        )
    } else {
        // The same phrase twice (no summary to check) is said once.
        let mut said: Vec<&str> = Vec::new();
        for p in failing {
            if !said.contains(&p) {
                said.push(p);
            }
        }
        said.join("; ")
    };
    if !settings.ignored.is_empty() {
        summary.push_str(&format!(" (ignored inputs: {})", settings.ignored.join(", ")));
    }
    Report {
        verdict,
        summary: truncate(&summary, MAX_SUMMARY_CHARS - 3),
        checks: checks.into_iter().map(|(c, _)| c).collect(),
        installation: settings.installation.clone(),
        revision: settings.revision.clone(),
        baseline_revision: settings.baseline_revision.clone(),
    }
}

/// The report as one line of JSON of at most [`MAX_REPORT_BYTES`] bytes:
/// the details (and the names given by the environment) are cut shorter
/// and shorter until it fits.
pub fn render(report: &Report) -> String {
    let text = |r: &Report| serde_json::to_string(r).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    let whole = text(report);
    if whole.len() <= MAX_REPORT_BYTES {
        return whole;
    }
    let mut last = whole;
    for cap in [400, 200, 100, 40, 0] {
        let mut cut = report.clone();
        for c in &mut cut.checks {
            c.detail = truncate(&c.detail, cap);
        }
        for field in [
            &mut cut.installation,
            &mut cut.revision,
            &mut cut.baseline_revision,
        ]
        .into_iter()
        .flatten()
        {
            *field = truncate(field, cap.max(60));
        }
        last = text(&cut);
        if last.len() <= MAX_REPORT_BYTES {
            break;
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{lead, summarize};

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    fn inputs(pairs: &[(&str, &str)]) -> String {
        serde_json::Value::Object(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
                .collect(),
        )
        .to_string()
    }

    fn settings(reference: Reference) -> Settings {
        Settings {
            candidate: "10.0.0.1:8080".parse().unwrap(),
            reference,
            documents: split_documents("corpus", EVAL_CORPUS).unwrap(),
            max_sentences: 2,
            min_agreement: 0.8,
            max_latency: Duration::from_millis(5000),
            request_timeout: Duration::from_secs(30),
            connect_wait: Duration::from_secs(30),
            ignored: vec![],
            installation: None,
            revision: None,
            baseline_revision: None,
        }
    }

    fn baseline() -> Reference {
        Reference::Baseline("10.0.0.2:8080".parse().unwrap())
    }

    fn answer(sentences: Vec<String>, ms: u64) -> Answer {
        Answer::Summary {
            sentences,
            took: Duration::from_millis(ms),
        }
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn f1_is_the_overlap_of_two_sets_of_sentences() {
        let ab = strings(&["A.", "B."]);
        assert_eq!(f1(&ab, &ab), 1.0);
        assert_eq!(f1(&ab, &strings(&["C.", "D."])), 0.0);
        assert_eq!(f1(&ab, &strings(&["B.", "C."])), 0.5);
        // precision 1/1, recall 1/2
        assert!((f1(&strings(&["A."]), &ab) - 2.0 / 3.0).abs() < 1e-9);
        // Order and surrounding space do not matter.
        assert_eq!(f1(&strings(&[" B.", "A."]), &ab), 1.0);
        assert_eq!(f1(&[], &[]), 1.0);
        assert_eq!(f1(&[], &ab), 0.0);
    }

    #[test]
    fn the_corpus_tells_a_lead_summary_from_a_scored_one() {
        let docs = split_documents("corpus", EVAL_CORPUS).unwrap();
        assert_eq!(docs.len(), 3);
        for doc in &docs {
            let n = sentences(doc).len();
            assert!((4..=6).contains(&n), "{n} sentences: {doc}");
            let scored = summarize(doc, DEFAULT_MAX_SENTENCES);
            let lead = lead(doc, DEFAULT_MAX_SENTENCES);
            assert_eq!(scored.len(), 2);
            assert_eq!(f1(&scored, &lead), 0.0, "{scored:?} {lead:?}");
            // At three sentences too, they disagree clearly.
            assert!(f1(&summarize(doc, 3), &crate::lead(doc, 3)) < 0.5, "{doc}");
        }
    }

    #[test]
    fn base_urls_are_addresses() {
        assert_eq!(
            parse_base_url("X", "http://10.96.0.12:8080/"),
            Ok("10.96.0.12:8080".parse().unwrap())
        );
        assert_eq!(
            parse_base_url("X", "http://[fd00::1]:80"),
            Ok("[fd00::1]:80".parse().unwrap())
        );
        assert_eq!(
            parse_base_url("X", "http://agent.default.svc:8080"),
            Err(
                "X=\"http://agent.default.svc:8080\" is not a base URL http://IP:PORT (an IP address and a port: no names)"
                    .to_string()
            )
        );
        assert!(parse_base_url("X", "https://10.0.0.1:443").is_err());
        assert!(parse_base_url("X", "http://10.0.0.1:8080/v1").is_err());
    }

    #[test]
    fn documents_are_separated_by_dash_lines() {
        assert_eq!(
            split_documents("c", "One. Two.\n---\n Three.\nFour.\n  ---  \nFive.").unwrap(),
            strings(&["One. Two.", "Three.\nFour.", "Five."])
        );
        // A --- inside a line does not separate.
        assert_eq!(split_documents("c", "a --- b").unwrap(), strings(&["a --- b"]));
        assert_eq!(split_documents("c", " \n"), Err("c is empty".to_string()));
        assert_eq!(
            split_documents("c", "One.\n---\n\n---\nTwo."),
            Err("c: part 2 of 3 is empty".to_string())
        );
    }

    #[test]
    fn settings_with_a_baseline_and_defaults() {
        let vars = inputs(&[("corpus", EVAL_CORPUS), ("temperature", "0.2"), ("expected", "x")]);
        let s = Settings::from_env(env(&[
            ("SOMASTACK_GATE_CANDIDATE", "http://10.0.0.1:8080"),
            ("SOMASTACK_GATE_BASELINE", "http://10.0.0.2:8080"),
            ("SOMASTACK_GATE_INPUTS", &vars),
            ("SOMASTACK_INSTALLATION", "shop/agent"),
            ("SOMASTACK_GATE_REVISION", "2"),
        ]))
        .unwrap();
        assert_eq!(s.reference, baseline());
        assert_eq!(s.documents.len(), 3);
        assert_eq!(s.max_sentences, 2);
        assert_eq!(s.min_agreement, 0.8);
        assert_eq!(s.max_latency, Duration::from_secs(5));
        assert_eq!(s.request_timeout, Duration::from_secs(30));
        assert_eq!(s.ignored, strings(&["temperature", "expected"]));
        assert_eq!(s.installation.as_deref(), Some("shop/agent"));
        assert_eq!(s.revision.as_deref(), Some("2"));
        assert_eq!(s.baseline_revision, None);
    }

    #[test]
    fn settings_with_fixed_expectations() {
        let vars = inputs(&[
            ("corpus", "One. Two. Three.\n---\nFour. Five."),
            ("expected", "Two.\nThree.\n---\nFour."),
            ("maxSentences", "3"),
            ("minAgreement", "0.5"),
            ("maxLatencyMs", "250"),
            ("requestTimeoutSeconds", "5"),
        ]);
        let s = Settings::from_env(env(&[
            ("SOMASTACK_GATE_CANDIDATE", "http://10.0.0.1:8080"),
            ("SOMASTACK_GATE_INPUTS", &vars),
        ]))
        .unwrap();
        assert_eq!(
            s.reference,
            Reference::Expected(vec![strings(&["Two.", "Three."]), strings(&["Four."])])
        );
        assert_eq!(
            (s.max_sentences, s.min_agreement, s.max_latency, s.request_timeout),
            (3, 0.5, Duration::from_millis(250), Duration::from_secs(5))
        );
        // Numbers written as JSON numbers are read too.
        let s = Settings::from_env(env(&[
            ("SOMASTACK_GATE_CANDIDATE", "http://10.0.0.1:8080"),
            ("SOMASTACK_GATE_BASELINE", "http://10.0.0.2:8080"),
            ("SOMASTACK_GATE_INPUTS", r#"{"corpus":"One.","maxSentences":4}"#),
        ]))
        .unwrap();
        assert_eq!(s.max_sentences, 4);
    }

    #[test]
    fn settings_an_evaluation_cannot_run_with() {
        let with = |vars: &[(&str, &str)], baseline: bool| {
            let vars = inputs(vars);
            let mut env_vars = vec![
                ("SOMASTACK_GATE_CANDIDATE", "http://10.0.0.1:8080"),
                ("SOMASTACK_GATE_INPUTS", vars.as_str()),
            ];
            if baseline {
                env_vars.push(("SOMASTACK_GATE_BASELINE", "http://10.0.0.2:8080"));
            }
            Settings::from_env(env(&env_vars)).unwrap_err()
        };
        let corpus = ("corpus", "One.\n---\nTwo.");
        assert_eq!(
            with(&[], true),
            "input corpus (documents separated by --- lines) is not given"
        );
        assert_eq!(with(&[("corpus", "")], true), "input corpus is empty");
        assert_eq!(
            with(&[corpus, ("maxSentences", "two")], true),
            "input maxSentences=\"two\" is not a whole number from 1 to 50"
        );
        assert!(with(&[corpus, ("maxSentences", "51")], true).contains("from 1 to 50"));
        assert_eq!(
            with(&[corpus, ("minAgreement", "1.5")], true),
            "input minAgreement=\"1.5\" is not a number from 0 to 1"
        );
        assert!(with(&[corpus, ("maxLatencyMs", "0")], true).starts_with("input maxLatencyMs"));
        assert!(
            with(&[corpus, ("requestTimeoutSeconds", "-1")], true).starts_with("input requestTimeoutSeconds")
        );
        assert_eq!(
            with(&[corpus], false),
            "without SOMASTACK_GATE_BASELINE, input expected (one summary per document) is required"
        );
        assert_eq!(
            with(&[corpus, ("expected", "One.")], false),
            "input expected has 1 summaries for 2 documents"
        );
        assert_eq!(
            Settings::from_env(env(&[("SOMASTACK_GATE_INPUTS", "{}")])).unwrap_err(),
            "SOMASTACK_GATE_CANDIDATE (the candidate's base URL) is not set"
        );
        assert!(
            Settings::from_env(env(&[
                ("SOMASTACK_GATE_CANDIDATE", "http://10.0.0.1:8080"),
                ("SOMASTACK_GATE_INPUTS", "[1]"),
            ]))
            .unwrap_err()
            .starts_with("SOMASTACK_GATE_INPUTS is not a JSON object of strings")
        );
    }

    #[test]
    fn summaries_are_read_from_answers() {
        assert_eq!(
            summary_of(200, br#"{"summary":"A. B.","sentences":["A.","B."]}"#),
            Ok(strings(&["A.", "B."]))
        );
        assert_eq!(
            summary_of(200, br#"{"summary":"A. B."}"#),
            Ok(strings(&["A.", "B."]))
        );
        assert_eq!(
            summary_of(422, br#"{"error":"text is empty"}"#),
            Err(r#"HTTP 422: {"error":"text is empty"}"#.to_string())
        );
        assert_eq!(
            summary_of(200, b"{}"),
            Err("the answer has no summary".to_string())
        );
        assert_eq!(
            summary_of(200, br#"{"sentences":[]}"#),
            Err("the summary is empty".to_string())
        );
        assert!(
            summary_of(200, b"<html>")
                .unwrap_err()
                .starts_with("the answer is not JSON")
        );
    }

    fn scored_answers(s: &Settings, ms: u64) -> Vec<Answer> {
        s.documents.iter().map(|d| answer(summarize(d, 2), ms)).collect()
    }

    fn by_name<'a>(r: &'a Report, name: &str) -> &'a Check {
        r.checks.iter().find(|c| c.name == name).unwrap()
    }

    #[test]
    fn a_release_that_agrees_with_its_baseline_passes() {
        let s = settings(baseline());
        let reference: Vec<Vec<String>> = s.documents.iter().map(|d| summarize(d, 2)).collect();
        let r = judge(&s, &scored_answers(&s, 12), &reference);
        assert_eq!(r.verdict, Verdict::Pass, "{r:?}");
        assert_eq!(
            r.checks.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["answers", "extractive", "length", "agreement", "latency"]
        );
        assert!(r.checks.iter().all(|c| c.passed));
        assert_eq!(
            r.summary,
            "all 5 checks passed on 3 documents: agreement 1.00 with the baseline, slowest answer 12 ms"
        );
        assert_eq!(
            by_name(&r, "agreement").detail,
            "mean sentence F1 1.00 with the baseline over 3 documents (1.00, 1.00, 1.00), at least 0.80"
        );
    }

    #[test]
    fn a_regressed_release_fails_on_agreement() {
        let s = settings(baseline());
        let reference: Vec<Vec<String>> = s.documents.iter().map(|d| summarize(d, 2)).collect();
        let answers: Vec<Answer> = s.documents.iter().map(|d| answer(lead(d, 2), 3)).collect();
        let r = judge(&s, &answers, &reference);
        assert_eq!(r.verdict, Verdict::Fail);
        assert!(!by_name(&r, "agreement").passed);
        assert!(by_name(&r, "extractive").passed && by_name(&r, "length").passed);
        assert_eq!(
            r.summary,
            "agreement 0.00 < 0.80 with the baseline on 3 documents"
        );
    }

    #[test]
    fn every_check_can_fail() {
        let s = Settings {
            ignored: strings(&["temperature"]),
            ..settings(Reference::Expected(vec![]))
        };
        let d = &s.documents;
        let reference: Vec<Vec<String>> = d.iter().map(|d| summarize(d, 2)).collect();
        let mut invented = summarize(&d[1], 2);
        invented[0] = "Drills are optional.".into();
        let answers = vec![
            Answer::Failed("connection refused".into()),
            answer(invented, 10),
            answer(sentences(&d[2]).iter().map(|s| s.to_string()).collect(), 6000),
        ];
        let r = judge(&s, &answers, &reference);
        assert_eq!(r.verdict, Verdict::Fail);
        assert!(r.checks.iter().all(|c| !c.passed), "{r:?}");
        assert_eq!(
            by_name(&r, "answers").detail,
            "1 of 3 got no summary; the first, document 1: connection refused"
        );
        assert_eq!(
            by_name(&r, "extractive").detail,
            "1 sentence is not in its document; the first, document 2: \"Drills are optional.\""
        );
        assert_eq!(
            by_name(&r, "length").detail,
            "1 summary is over maxSentences 2; the first, document 3, has 5"
        );
        // 0 (no answer), 0.5, 2*2/(5+2)
        assert_eq!(
            by_name(&r, "agreement").detail,
            "mean sentence F1 0.36 with the expected summaries over 3 documents (0.00, 0.50, 0.57), below 0.80"
        );
        assert_eq!(
            by_name(&r, "latency").detail,
            "slowest answer 6000 ms, over 5000 ms"
        );
        assert_eq!(
            r.summary,
            "1 of 3 documents not answered; 1 sentence not extractive; 1 summary over 2 sentences; \
             agreement 0.36 < 0.80 with the expected summaries on 3 documents; slowest answer 6000 ms > 5000 ms \
             (ignored inputs: temperature)"
                .chars()
                .take(MAX_SUMMARY_CHARS - 3)
                .collect::<String>()
                + "..."
        );
        assert!(r.summary.chars().count() <= MAX_SUMMARY_CHARS);
    }

    #[test]
    fn a_candidate_that_answers_nothing_fails_every_check() {
        let s = settings(baseline());
        let reference: Vec<Vec<String>> = s.documents.iter().map(|d| summarize(d, 2)).collect();
        let answers = vec![Answer::Failed("timed out".into()); 3];
        let r = judge(&s, &answers, &reference);
        assert!(r.checks.iter().all(|c| !c.passed), "{r:?}");
        assert_eq!(
            r.summary,
            "3 of 3 documents not answered; no summary of the candidate to check; \
             agreement 0.00 < 0.80 with the baseline on 3 documents"
        );
    }

    #[test]
    fn a_figure_close_to_its_threshold_is_not_rounded_onto_it() {
        assert_eq!(figure(0.7951, 0.8), "0.7951");
        assert_eq!(figure(0.8, 0.8), "0.80");
        assert_eq!(figure(0.42, 0.8), "0.42");
    }

    #[test]
    fn a_report_always_fits_a_termination_message() {
        let s = Settings {
            installation: Some("n".repeat(3000)),
            ..settings(baseline())
        };
        let reference: Vec<Vec<String>> = s.documents.iter().map(|d| summarize(d, 2)).collect();
        let answers = vec![
            Answer::Failed(format!("HTTP 500: {}", "\u{1}é".repeat(5000))),
            answer(vec!["x".repeat(5000)], 1),
            answer(vec!["y".repeat(5000)], 1),
        ];
        let r = judge(&s, &answers, &reference);
        assert!(serde_json::to_string(&r).unwrap().len() > MAX_REPORT_BYTES);
        let text = render(&r);
        assert!(text.len() <= MAX_REPORT_BYTES, "{}", text.len());
        let back: Report = serde_json::from_str(&text).unwrap();
        assert_eq!(back.verdict, Verdict::Fail);
        assert_eq!(back.summary, r.summary);
        assert_eq!(back.checks.len(), 5);
        assert!(
            back.checks[0].detail.starts_with("1 of 3 got no summary"),
            "{back:?}"
        );
        // A report that fits is left whole.
        let small = judge(&settings(baseline()), &scored_answers(&s, 1), &reference);
        assert_eq!(render(&small), serde_json::to_string(&small).unwrap());
    }
}

//! The reference agent's answers against the contracts' JSON schemas
//! (docs/evaluation.schema.json, docs/moderation.schema.json), which other
//! evaluators and moderators are written against. No JSON-schema crate is a
//! dependency of the workspace: the validator below knows the keywords the
//! two schemas use, and refuses any other, so a schema that grows past it
//! fails these tests instead of being half checked. And the corpus that
//! docs/agent.md gives users to copy is the one the tests use.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::evaluate::{self, Answer, EVAL_CORPUS, Reference, Report, Settings};
use crate::moderate::{self, Stage};
use crate::{lead, summarize};

const EVALUATION: &str = include_str!("../../docs/evaluation.schema.json");
const MODERATION: &str = include_str!("../../docs/moderation.schema.json");

fn schema(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

/// Why `value` does not match `schema` (resolved against `root`), or `Ok`.
fn validate(root: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let Some(keywords) = schema.as_object() else {
        panic!("{at}: a schema is an object: {schema}");
    };
    for (key, rule) in keywords {
        match key.as_str() {
            "$schema" | "$id" | "title" | "description" | "$defs" => {}
            "$ref" => {
                let name = rule.as_str().unwrap().strip_prefix("#/$defs/").unwrap();
                validate(root, &root["$defs"][name], value, at)?;
            }
            "type" => {
                let ok = match rule.as_str().unwrap() {
                    "object" => value.is_object(),
                    "array" => value.is_array(),
                    "string" => value.is_string(),
                    "boolean" => value.is_boolean(),
                    "integer" => value.is_i64() || value.is_u64(),
                    "number" => value.is_number(),
                    other => panic!("{at}: unknown type {other}"),
                };
                if !ok {
                    return Err(format!("{at}: {value} is not of type {rule}"));
                }
            }
            "enum" => {
                if !rule.as_array().unwrap().contains(value) {
                    return Err(format!("{at}: {value} is not one of {rule}"));
                }
            }
            "required" => {
                for name in rule.as_array().unwrap() {
                    let name = name.as_str().unwrap();
                    if value.get(name).is_none() {
                        return Err(format!("{at}: {name} is required"));
                    }
                }
            }
            "properties" => {
                for (name, sub) in rule.as_object().unwrap() {
                    if let Some(v) = value.get(name) {
                        validate(root, sub, v, &format!("{at}.{name}"))?;
                    }
                }
            }
            "items" => {
                for (i, v) in value.as_array().into_iter().flatten().enumerate() {
                    validate(root, rule, v, &format!("{at}[{i}]"))?;
                }
            }
            "minLength" | "maxLength" => {
                let Some(s) = value.as_str() else { continue };
                let (n, limit) = (s.chars().count() as u64, rule.as_u64().unwrap());
                if (key == "minLength" && n < limit) || (key == "maxLength" && n > limit) {
                    return Err(format!("{at}: {n} characters, {key} {limit}"));
                }
            }
            other => panic!("{at}: the test's validator does not know the keyword {other}"),
        }
    }
    Ok(())
}

fn valid(schema_text: &str, value: &Value) -> Result<(), String> {
    let root = schema(schema_text);
    validate(&root, &root, value, "$")
}

fn settings(reference: Reference) -> Settings {
    Settings {
        candidate: "10.0.0.1:8080".parse().unwrap(),
        reference,
        documents: evaluate::split_documents("corpus", EVAL_CORPUS).unwrap(),
        max_sentences: 2,
        min_agreement: 0.8,
        max_latency: Duration::from_millis(5000),
        request_timeout: Duration::from_secs(30),
        connect_wait: Duration::from_secs(30),
        ignored: vec!["temperature".into()],
        installation: Some("summarizer".into()),
        revision: Some("2".into()),
        baseline_revision: Some("1".into()),
    }
}

/// Reports of every kind the reference evaluator writes, as written.
fn reports() -> Vec<String> {
    let s = settings(Reference::Baseline("10.0.0.2:8080".parse().unwrap()));
    let reference: Vec<Vec<String>> = s.documents.iter().map(|d| summarize(d, 2)).collect();
    let answered = |f: fn(&str, usize) -> Vec<String>| -> Vec<Answer> {
        s.documents
            .iter()
            .map(|d| Answer::Summary {
                sentences: f(d, 2),
                took: Duration::from_millis(7),
            })
            .collect()
    };
    let huge = vec![
        Answer::Failed("x".repeat(10_000)),
        Answer::Failed(String::new()),
        Answer::Failed(String::new()),
    ];
    [answered(summarize), answered(lead), huge]
        .iter()
        .map(|answers| evaluate::render(&evaluate::judge(&s, answers, &reference)))
        .collect()
}

#[test]
fn the_reference_evaluators_reports_match_the_schema() {
    for text in reports() {
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(valid(EVALUATION, &value), Ok(()), "{text}");
    }
}

#[test]
fn the_evaluation_schema_names_every_field_of_the_report_and_no_other() {
    let root = schema(EVALUATION);
    let names = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<BTreeSet<_>>();
    let report: Value = serde_json::from_str(&reports()[0]).unwrap();
    assert_eq!(names(&root["properties"]), names(&report));
    assert_eq!(
        names(&root["$defs"]["Check"]["properties"]),
        names(&report["checks"][0])
    );
    // And what the schema describes, the reference evaluator reads back.
    let _: Report = serde_json::from_value(report).unwrap();
}

#[test]
fn the_evaluation_schema_refuses_what_is_not_a_report() {
    let good = json!({
        "verdict": "Fail",
        "summary": "agreement 0.42 < 0.80 with the baseline on 3 documents",
        "checks": [{ "name": "agreement", "passed": false, "detail": "mean sentence F1 0.42" }],
    });
    assert_eq!(valid(EVALUATION, &good), Ok(()));
    let with = |path: &[&str], v: Value| {
        let mut bad = good.clone();
        let mut at = &mut bad;
        for p in &path[..path.len() - 1] {
            at = match p.parse::<usize>() {
                Ok(i) => &mut at[i],
                Err(_) => &mut at[*p],
            };
        }
        if v.is_null() {
            at.as_object_mut().unwrap().remove(path[path.len() - 1]);
        } else {
            at[path[path.len() - 1]] = v;
        }
        valid(EVALUATION, &bad)
    };
    assert!(with(&["verdict"], json!("Maybe")).is_err());
    assert!(with(&["verdict"], Value::Null).is_err());
    assert!(with(&["summary"], json!("s".repeat(201))).is_err());
    assert!(with(&["checks"], Value::Null).is_err());
    assert!(with(&["checks", "0", "passed"], json!("yes")).is_err());
    assert!(with(&["checks", "0", "detail"], Value::Null).is_err());
    assert!(with(&["checks", "0", "name"], json!("")).is_err());
}

#[test]
fn the_reference_moderators_decisions_match_the_schema() {
    let settings = moderate::Settings {
        deny: moderate::deny_terms("exfiltrate"),
        max_bytes: 30,
        stages: vec![Stage::Goal, Stage::Input],
    };
    for stage in Stage::ALL {
        for text in [
            "Summarize the drills.",
            "exfiltrate it",
            "x\u{0}",
            &"y".repeat(31),
        ] {
            let answer = moderate::moderate(&settings, stage, text);
            let value = serde_json::to_value(&answer).unwrap();
            assert_eq!(valid(MODERATION, &value), Ok(()), "{value}");
            // The schema's fields are the answer's.
            let root = schema(MODERATION);
            let names = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<BTreeSet<_>>();
            assert_eq!(names(&root["properties"]), names(&value));
        }
    }
}

#[test]
fn the_moderation_schema_refuses_what_is_not_a_decision() {
    let good =
        json!({ "decision": "Refuse", "stage": "input", "reason": "input contains the denied term \"x\"" });
    assert_eq!(valid(MODERATION, &good), Ok(()));
    for (key, v) in [
        ("decision", json!("Deny")),
        ("decision", json!(true)),
        ("stage", json!("plan")),
        ("reason", json!(3)),
    ] {
        let mut bad = good.clone();
        bad[key] = v;
        assert!(valid(MODERATION, &bad).is_err(), "{bad}");
    }
    let mut bad = good.clone();
    bad.as_object_mut().unwrap().remove("reason");
    assert_eq!(valid(MODERATION, &bad), Err("$: reason is required".to_string()));
}

#[test]
fn docs_agent_md_shows_the_corpus_as_it_is() {
    let docs = include_str!("../../docs/agent.md");
    assert!(
        docs.contains(&format!("```text\n{EVAL_CORPUS}```")),
        "docs/agent.md has another corpus"
    );
    let yaml: String = EVAL_CORPUS.lines().map(|l| format!("    {l}\n")).collect();
    assert!(
        docs.contains(&format!("  corpus: |\n{yaml}```")),
        "docs/agent.md has another YAML corpus"
    );
}

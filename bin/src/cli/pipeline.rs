//! `nexa pipeline run|status|list|cancel|rerun`: pipelines from TOML or JSON files.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::{Api, FINISHED, encode, exit_for, items, printable, table, text};
use crate::options::{PipelineCommand, PipelineIdArgs, PipelineRerunArgs, PipelineRunArgs};

pub(super) fn run(cmd: PipelineCommand) -> Result<ExitCode> {
    match cmd {
        PipelineCommand::Run(args) => start(&args),
        PipelineCommand::Status(args) => status(&args),
        PipelineCommand::List(args) => list(&args),
        PipelineCommand::Cancel(args) => cancel(&args),
        PipelineCommand::Rerun(args) => rerun(&args),
    }
}

/// The pipeline a file declares, as the API takes it: TOML (`.toml`) or JSON.
fn read_spec(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the pipeline {}", path.display()))?;
    let is_toml = path.extension().is_some_and(|e| e == "toml");
    if is_toml {
        let value: toml::Value = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{} is not valid TOML: {e}", path.display()))?;
        return serde_json::to_value(value).context("the TOML has values JSON cannot hold");
    }
    serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{} is not valid JSON ({e}); a pipeline is a .toml or .json file",
            path.display()
        )
    })
}

fn start(args: &PipelineRunArgs) -> Result<ExitCode> {
    let spec = read_spec(&args.file)?;
    let api = Api::new(&args.client);
    let (_, run) = api.post("/pipelines", &spec, &[])?;
    finish(&api, run, args.wait, args.client.json)
}

fn rerun(args: &PipelineRerunArgs) -> Result<ExitCode> {
    let mut body = json!({});
    if let Some(from) = &args.from {
        body["from"] = json!(from);
    }
    if let Some(file) = &args.file {
        body["spec"] = read_spec(file)?;
    }
    let api = Api::new(&args.client);
    let (_, run) = api.post(
        &format!("/pipelines/{}/rerun", encode(&args.id)),
        &body,
        &[],
    )?;
    finish(&api, run, args.wait, args.client.json)
}

/// Shows a run just made, and waits for it when asked.
fn finish(api: &Api, run: Value, wait: bool, json: bool) -> Result<ExitCode> {
    let id = text(&run["pipeline_id"]);
    if !wait {
        if json {
            println!("{run:#}");
        } else {
            let again = run["rerun_of"]
                .as_str()
                .map_or_else(String::new, |r| format!(" (rerun of {r})"));
            println!("started {id}{again}; nexa pipeline status {id}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    watch(api, &id, json)
}

/// Polls a run until it ends, printing each step as it changes.
fn watch(api: &Api, id: &str, json: bool) -> Result<ExitCode> {
    let mut shown: Vec<String> = Vec::new();
    loop {
        let run = api.get(&format!("/pipelines/{}", encode(id)))?;
        if !json {
            let lines = step_lines(&run);
            for line in &lines {
                if !shown.contains(line) {
                    eprintln!("{line}");
                }
            }
            shown = lines;
        }
        let status = text(&run["status"]);
        if FINISHED.contains(&status.as_str()) {
            if json {
                println!("{run:#}");
            } else {
                summary(&run);
            }
            return Ok(exit_for(&status));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// One line per step that has moved: `teacher: running (job-4)`.
fn step_lines(run: &Value) -> Vec<String> {
    steps(run)
        .iter()
        .filter(|s| s["status"] != "pending")
        .map(|s| {
            let mut line = format!("{}: {}", text(&s["name"]), text(&s["status"]));
            if let Some(job) = s["job_id"].as_str() {
                line.push_str(&format!(" ({job})"));
            }
            if let Some(from) = s["reused_from"].as_str() {
                line.push_str(&format!(", reused from {from}"));
            }
            line
        })
        .collect()
}

fn steps(run: &Value) -> &[Value] {
    items(&run["steps"])
}

fn summary(run: &Value) {
    let id = text(&run["pipeline_id"]);
    println!("{id} ({}): {}", text(&run["name"]), text(&run["status"]));
    if let Some(error) = run["error"].as_str() {
        println!("  {error}");
    }
}

fn status(args: &PipelineIdArgs) -> Result<ExitCode> {
    let api = Api::new(&args.client);
    if args.wait {
        return watch(&api, &args.id, args.client.json);
    }
    let run = api.get(&format!("/pipelines/{}", encode(&args.id)))?;
    if args.client.json {
        println!("{run:#}");
        return Ok(ExitCode::SUCCESS);
    }
    summary(&run);
    let rows: Vec<Vec<String>> = steps(&run)
        .iter()
        .map(|s| {
            let what = s["job_type"]
                .as_str()
                .map_or_else(|| "gate".to_owned(), str::to_owned);
            let job = match (s["job_id"].as_str(), s["reused_from"].as_str()) {
                (Some(j), Some(from)) => format!("{j} (reused from {from})"),
                (Some(j), None) => j.to_owned(),
                _ => String::new(),
            };
            let mut detail = Vec::new();
            if let Some(model) = s["outputs"]["model"].as_str() {
                detail.push(format!("model {model}"));
            }
            if let Some(artifacts) = s["outputs"]["artifacts"].as_object() {
                for (name, uri) in artifacts {
                    detail.push(format!("{name} {}", text(uri)));
                }
            }
            if let Some(gate) = s["gate"].as_object() {
                if gate["passed"] == true {
                    detail.push(format!("passed on {}", text(&gate["on"])));
                } else {
                    let reasons: Vec<String> = items(&gate["reasons"]).iter().map(text).collect();
                    detail.push(reasons.join("; "));
                }
            } else if let Some(reason) = s["reason"].as_str() {
                detail.push(reason.to_owned());
            }
            vec![
                text(&s["name"]),
                what,
                text(&s["status"]),
                job,
                printable(&detail.join(", ")),
            ]
        })
        .collect();
    table(&["STEP", "TYPE", "STATUS", "JOB", "DETAIL"], &rows);
    Ok(ExitCode::SUCCESS)
}

fn list(args: &crate::options::ClientArgs) -> Result<ExitCode> {
    let api = Api::new(args);
    let answer = api.get("/pipelines")?;
    if args.json {
        println!("{answer:#}");
        return Ok(ExitCode::SUCCESS);
    }
    let runs = items(&answer["pipelines"]);
    if runs.is_empty() {
        println!("no pipeline runs (nexa pipeline run FILE)");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            let done = steps(r)
                .iter()
                .filter(|s| s["status"] == "succeeded")
                .count();
            vec![
                text(&r["pipeline_id"]),
                text(&r["name"]),
                text(&r["status"]),
                format!("{done}/{}", steps(r).len()),
                r["failed_step"].as_str().unwrap_or("").to_owned(),
                text(&r["created_at"]),
            ]
        })
        .collect();
    table(
        &[
            "RUN",
            "NAME",
            "STATUS",
            "STEPS DONE",
            "FAILED AT",
            "CREATED",
        ],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

fn cancel(args: &PipelineIdArgs) -> Result<ExitCode> {
    let api = Api::new(&args.client);
    let (_, run) = api.post(
        &format!("/pipelines/{}/cancel", encode(&args.id)),
        &json!({}),
        &[],
    )?;
    if args.wait {
        return watch(&api, &args.id, args.client.json);
    }
    if args.client.json {
        println!("{run:#}");
    } else {
        println!("{}: {}", text(&run["pipeline_id"]), text(&run["status"]));
    }
    Ok(ExitCode::SUCCESS)
}

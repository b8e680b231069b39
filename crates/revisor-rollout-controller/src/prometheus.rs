//! The one Prometheus query client: instant queries over its HTTP API (`/api/v1/query`), for the
//! Rollout metrics a manifest queries itself and for the revision counters read on Kubernetes
//! (revisor-kube).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

/// One series: its labels and its value.
pub type Series = (BTreeMap<String, String>, f64);

/// What an instant query answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Scalar(f64),
    Vector(Vec<Series>),
}

impl Answer {
    /// The scalar, or the first sample of the vector; `None` for an empty vector.
    pub fn first(&self) -> Option<f64> {
        match self {
            Answer::Scalar(v) => Some(*v),
            Answer::Vector(series) => series.first().map(|(_, v)| *v),
        }
    }

    /// The vector's series (a scalar has none).
    pub fn series(self) -> Vec<Series> {
        match self {
            Answer::Scalar(_) => Vec::new(),
            Answer::Vector(series) => series,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PrometheusClient {
    url: String,
    http: reqwest::Client,
    timeout: Duration,
}

impl PrometheusClient {
    pub fn new(url: &str) -> Self {
        Self::with_client(url, reqwest::Client::new())
    }

    pub fn with_client(url: &str, http: reqwest::Client) -> Self {
        PrometheusClient {
            url: url.trim_end_matches('/').to_string(),
            http,
            timeout: Duration::from_secs(10),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs an instant query.
    pub async fn query(&self, query: &str) -> Result<Answer, String> {
        let resp = self
            .http
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", query)])
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| format!("Prometheus at {}: {e}", self.url))?;
        let ok = resp.status().is_success();
        let code = resp.status();
        let body: Value = resp
            .json()
            .await
            .map_err(|e| format!("Prometheus at {}: not JSON ({code}): {e}", self.url))?;
        parse(ok, &body).map_err(|e| format!("Prometheus at {} refused {query:?}: {e}", self.url))
    }
}

/// Reads the HTTP API's answer to an instant query.
pub fn parse(ok: bool, body: &Value) -> Result<Answer, String> {
    if !ok || body["status"] != "success" {
        return Err(body["error"].as_str().unwrap_or("no error given").to_string());
    }
    let data = &body["data"];
    let number = |v: &Value| -> Result<f64, String> {
        let s = v.get(1).and_then(|s| s.as_str()).ok_or("a sample without a value")?;
        s.parse::<f64>().map_err(|_| format!("{s:?} is not a number"))
    };
    match data["resultType"].as_str() {
        Some("scalar") => Ok(Answer::Scalar(number(&data["result"])?)),
        Some("vector") => {
            let mut out = Vec::new();
            for s in data["result"].as_array().into_iter().flatten() {
                let labels = s["metric"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect();
                out.push((labels, number(&s["value"])?));
            }
            Ok(Answer::Vector(out))
        }
        other => Err(format!("answered a {other:?}, not a scalar or a vector")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scalars_and_vectors_are_read() {
        let scalar = json!({"status": "success", "data": {"resultType": "scalar", "result": [1.0, "0.25"]}});
        assert_eq!(parse(true, &scalar), Ok(Answer::Scalar(0.25)));
        let vector = json!({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {"le": "5"}, "value": [1.0, "3"]},
            {"metric": {"le": "+Inf"}, "value": [1.0, "4"]}
        ]}});
        let a = parse(true, &vector).unwrap();
        assert_eq!(a.first(), Some(3.0));
        assert_eq!(a.series()[1].0["le"], "+Inf");
        let empty = json!({"status": "success", "data": {"resultType": "vector", "result": []}});
        assert_eq!(parse(true, &empty).unwrap().first(), None);
    }

    #[test]
    fn refusals_and_odd_answers_say_what_is_wrong() {
        let refused = json!({"status": "error", "errorType": "bad_data", "error": "parse error at char 4"});
        assert_eq!(parse(false, &refused), Err("parse error at char 4".into()));
        let matrix = json!({"status": "success", "data": {"resultType": "matrix", "result": []}});
        assert!(parse(true, &matrix).unwrap_err().contains("\"matrix\""));
        let nan = json!({"status": "success", "data": {"resultType": "scalar", "result": [1.0, "x"]}});
        assert!(parse(true, &nan).unwrap_err().contains("not a number"));
    }
}

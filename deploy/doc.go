// Package deploy holds what an operator needs to run Postern relays: a
// container image (Dockerfile), a systemd unit, Kubernetes manifests, a
// docker compose stack with Prometheus and Grafana, alert rules with their
// promtool unit tests, and a dashboard. See README.md.
//
// The package has no code of its own; its tests check the artefacts: the
// alert rules and the Prometheus config with promtool, the systemd unit with
// systemd-analyze, the Kubernetes manifests by strict decoding into mirrors
// of the Kubernetes API types plus security checks, every PromQL expression
// against the metric names the relay and the probe export, and the example
// relay config against the real relay binary.
package deploy

// `deco report`: one self-contained HTML file (inline CSS and SVG, no
// scripts, nothing fetched) that shows a run, and optionally overlays others
// (its dense twin, other scales): loss (train and validation) against
// tokens, learning rate, the activation ratio with its target, a layer x
// step heatmap of the activation ratio, a layer x expert heatmap of expert
// load, tokens/s, and, with several runs, a summary table and final loss
// against non-embedding parameters (DECO vs dense). Every chart is an
// <svg class="chart ..." data-chart="NAME"> element; docs/monitoring.md
// lists the names.
#pragma once

#include <string>
#include <vector>

#include "report/run_history.h"

namespace deco::report {

// runs[0] is the report's subject; the others are compared with it.
std::string html_report(const std::vector<RunHistory>& runs);

// The same summary as plain text, one aligned row per run in order of
// non-embedding parameters (what `deco report` prints; a cluster's login
// node may have no browser).
std::string text_summary(const std::vector<RunHistory>& runs);

}  // namespace deco::report

#include "report/html_report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <limits>
#include <map>
#include <set>
#include <sstream>

#include "report/svg.h"

namespace deco::report {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr size_t kMaxLinePoints = 600;   // per series; more are averaged in groups
constexpr size_t kMaxHeatmapCols = 200;  // step bins of the layer x step heatmap

std::string layer_name(int64_t layer) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "layer %02lld", static_cast<long long>(layer));
  return buf;
}

std::string duration(double seconds) {
  if (!std::isfinite(seconds)) return "n/a";
  const long long s = static_cast<long long>(seconds);
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%lld:%02lld:%02lld", s / 3600, s / 60 % 60, s % 60);
  return buf;
}

// A per-step series, thinned for drawing; notes the averaging in `note`.
Series step_series(const std::string& label, const std::string& color, std::vector<double> x,
                   std::vector<double> y, std::string* note = nullptr) {
  const size_t group = downsample(x, y, kMaxLinePoints);
  if (note && group > 1) *note = "each point is the mean of " + std::to_string(group) + " steps";
  Series s;
  s.label = label;
  s.color = color;
  s.x = std::move(x);
  s.y = std::move(y);
  return s;
}

LineChart chart(const char* id, const char* title, const char* x_label, const char* y_label, bool si_x = false) {
  LineChart c;
  c.id = id;
  c.title = title;
  c.x_label = x_label;
  c.y_label = y_label;
  c.si_x = si_x;
  return c;
}

// The runs in order of non-embedding parameters (the order of a scaling table).
std::vector<const RunHistory*> by_size(const std::vector<RunHistory>& runs) {
  std::vector<const RunHistory*> sorted;
  for (const auto& r : runs) sorted.push_back(&r);
  std::stable_sort(sorted.begin(), sorted.end(), [](const RunHistory* a, const RunHistory* b) {
    return a->non_embedding_params < b->non_embedding_params;
  });
  return sorted;
}

std::string run_label(const RunHistory& r) { return r.name + (r.deco ? "" : " (dense)"); }

std::string model_summary(const RunHistory& r) {
  const auto& m = r.config.model;
  std::ostringstream s;
  s << m.num_layers << " layers, hidden " << m.hidden_size;
  if (r.deco) s << ", " << m.num_experts << " experts x " << m.moe_ffn_hidden_size;
  else s << ", dense FFN " << m.ffn_hidden_size;
  return s.str();
}

void figure(std::ostringstream& html, const std::string& svg, const std::string& caption) {
  html << "<figure>\n" << svg;
  if (!caption.empty()) html << "<figcaption>" << xml_escape(caption) << "</figcaption>\n";
  html << "</figure>\n";
}

std::string td(const std::string& text, bool num = true) {
  return std::string(num ? "<td class=\"num\">" : "<td>") + xml_escape(text) + "</td>";
}

void summary_table(std::ostringstream& html, const std::vector<RunHistory>& runs) {
  html << "<table class=\"summary\">\n<thead><tr><th>run</th><th>model</th><th>non-embedding params</th>"
          "<th>steps</th><th>tokens</th><th title=\"mean over the last 10% of steps (1 to 100 steps)\">final train "
          "loss</th><th>last val loss</th><th>final activation ratio (target)</th><th title=\"median over steps "
          "after the first\">tokens/s</th><th>elapsed</th><th>skipped steps</th><th>steps with alerts</th>"
          "</tr></thead>\n<tbody>\n";
  for (const auto& r : runs) {
    std::string ratio = "dense";
    if (r.deco)
      ratio = format_number(r.final_activation_ratio()) + " (" + format_number(r.config.sparsity.target_ratio) + ")";
    html << "<tr>" << td(r.name, false) << td(model_summary(r), false) << td(format_si(r.non_embedding_params))
         << td(std::to_string(static_cast<long long>(r.step.back()))) << td(format_si(r.tokens.back()))
         << td(format_number(r.final_lm_loss())) << td(format_number(r.final_val_loss())) << td(ratio)
         << td(format_number(std::round(r.mean_tokens_per_second()))) << td(duration(r.elapsed_s))
         << td(std::to_string(r.skipped_steps)) << td(std::to_string(r.alert_rows.size())) << "</tr>\n";
  }
  html << "</tbody></table>\n";
}

// Final loss against non-embedding parameters, one series per model kind.
void scaling_section(std::ostringstream& html, const std::vector<RunHistory>& runs) {
  const std::vector<const RunHistory*> sorted = by_size(runs);
  html << "<h2 id=\"scaling\">Scaling: final loss against non-embedding parameters</h2>\n"
       << "<table class=\"summary\">\n<thead><tr><th>run</th><th>kind</th><th>non-embedding params</th>"
          "<th>tokens</th><th>final train loss</th><th>last val loss</th><th>final activation ratio</th>"
          "<th>tokens/s</th></tr></thead>\n<tbody>\n";
  for (const RunHistory* r : sorted)
    html << "<tr>" << td(r->name, false) << td(r->deco ? "DECO" : "dense", false)
         << td(format_si(r->non_embedding_params)) << td(format_si(r->tokens.back()))
         << td(format_number(r->final_lm_loss())) << td(format_number(r->final_val_loss()))
         << td(r->deco ? format_number(r->final_activation_ratio()) : "dense")
         << td(format_number(std::round(r->mean_tokens_per_second()))) << "</tr>\n";
  html << "</tbody></table>\n";

  LineChart c = chart("scaling", "Final loss vs non-embedding parameters", "non-embedding parameters", "loss", true);
  c.log_x = true;
  const struct { bool deco; const char* label; size_t color; } kinds[] = {{true, "DECO", 0}, {false, "dense", 1}};
  for (const auto& k : kinds) {
    Series train, val;
    train.label = std::string(k.label) + ": final train loss";
    val.label = std::string(k.label) + ": last val loss";
    train.color = val.color = palette_color(k.color);
    train.markers = val.markers = true;
    val.dashed = true;
    for (const RunHistory* r : sorted) {
      if (r->deco != k.deco) continue;
      train.x.push_back(static_cast<double>(r->non_embedding_params));
      train.y.push_back(r->final_lm_loss());
      if (std::isfinite(r->final_val_loss())) {
        val.x.push_back(static_cast<double>(r->non_embedding_params));
        val.y.push_back(r->final_val_loss());
      }
    }
    if (!train.x.empty()) c.series.push_back(train);
    if (!val.x.empty()) c.series.push_back(val);
  }
  figure(html, render(c), "Each point is one run; lines join runs of the same kind in order of size.");
}

void deco_heatmaps(std::ostringstream& html, const RunHistory& r) {
  if (!r.deco || r.layer_ratio.empty()) return;
  std::vector<std::string> rows;
  for (size_t l = 0; l < r.layer_ratio.size(); ++l)
    rows.push_back(layer_name(l < r.deco_layers.size() ? r.deco_layers[l] : static_cast<int64_t>(l)));

  // Layer x step: the activation ratio, averaged within step bins.
  Heatmap steps;
  steps.id = "layer-ratio-heatmap";
  steps.title = "Activation ratio per layer and step: " + r.name;
  steps.x_label = "step";
  steps.y_label = "DECO layer";
  steps.value_label = "activation ratio";
  steps.row_labels = rows;
  const size_t n = r.step.size();
  const size_t bins = std::min(n, kMaxHeatmapCols);
  // Bin b holds rows [edge[b], edge[b + 1]).
  std::vector<size_t> edge(bins + 1);
  for (size_t b = 0; b <= bins; ++b) edge[b] = b * n / bins;
  double vmax = 0.0;
  for (size_t b = 0; b < bins; ++b) {
    const size_t i0 = edge[b], i1 = edge[b + 1];
    steps.col_labels.push_back(i1 - i0 > 1 ? "steps " + std::to_string(static_cast<long long>(r.step[i0])) + "-" +
                                                 std::to_string(static_cast<long long>(r.step[i1 - 1]))
                                           : "step " + std::to_string(static_cast<long long>(r.step[i0])));
  }
  for (const auto& per_row : r.layer_ratio) {
    std::vector<double> cells;
    for (size_t b = 0; b < bins; ++b) {
      const size_t i0 = edge[b], i1 = edge[b + 1];
      double s = 0;
      size_t k = 0;
      for (size_t i = i0; i < i1; ++i)
        if (std::isfinite(per_row[i])) { s += per_row[i]; ++k; }
      cells.push_back(k ? s / static_cast<double>(k) : kNaN);
      if (k) vmax = std::max(vmax, cells.back());
    }
    steps.values.push_back(std::move(cells));
  }
  // On the axis, each bin's first step.
  for (size_t b = 0; b < bins; ++b)
    steps.axis_labels.push_back(std::to_string(static_cast<long long>(r.step[edge[b]])));
  steps.vmin = 0.0;
  steps.vmax = vmax > 0 ? vmax : 1.0;
  figure(html, render(steps),
         "Rows are DECO layers, columns steps" + std::string(n > bins ? " (binned; hover a cell for its range)" : "") +
             ". Healthy: every row settles at the target " + format_number(r.config.sparsity.target_ratio) +
             ", not only the mean.");

  // Layer x expert: share of the window's tokens that activated each expert.
  if (r.expert_tokens.empty() || r.tokens_per_layer_in_window <= 0) return;
  Heatmap load;
  load.id = "expert-load-heatmap";
  load.title = "Expert load per layer: " + r.name;
  load.x_label = "routed expert";
  load.y_label = "DECO layer";
  load.value_label = "share of tokens";
  load.row_labels = rows;
  size_t experts = 0;
  for (const auto& l : r.expert_tokens) experts = std::max(experts, l.size());
  for (size_t e = 0; e < experts; ++e) load.col_labels.push_back("expert " + std::to_string(e));
  double lmax = 0.0;
  for (const auto& l : r.expert_tokens) {
    std::vector<double> cells(experts, kNaN);
    for (size_t e = 0; e < l.size(); ++e) {
      cells[e] = l[e] / static_cast<double>(r.tokens_per_layer_in_window);
      lmax = std::max(lmax, cells[e]);
    }
    load.values.push_back(std::move(cells));
  }
  load.vmin = 0.0;
  load.vmax = lmax > 0 ? lmax : 1.0;
  figure(html, render(load),
         "Share of the last " + std::to_string(r.load_window_rows) +
             " steps' tokens that activated each expert (a row's mean is the layer's activation ratio). "
             "Healthy: even colors along a row; a dark cell is a dead or starved expert, a bright one an "
             "overloaded expert.");
}

const char* kStyle = R"(
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto; max-width: 1120px;
       color: #222; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; }
h2 { font-size: 17px; margin-top: 32px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.meta { color: #666; font-size: 13px; }
table.summary { border-collapse: collapse; font-size: 13px; margin: 12px 0; }
table.summary th, table.summary td { border: 1px solid #ddd; padding: 4px 8px; }
table.summary th { background: #f5f5f5; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 16px 0; }
figcaption { color: #555; font-size: 12px; max-width: 880px; }
svg.chart { display: block; border: 1px solid #eee; }
nav a { margin-right: 12px; font-size: 13px; }
)";

}  // namespace

std::string text_summary(const std::vector<RunHistory>& runs) {
  const std::vector<const RunHistory*> sorted = by_size(runs);
  std::vector<std::vector<std::string>> rows = {{"run", "kind", "non-emb params", "steps", "tokens",
                                                 "final train loss", "last val loss", "act ratio", "tokens/s"}};
  for (const RunHistory* r : sorted)
    rows.push_back({r->name, r->deco ? "DECO" : "dense", format_si(r->non_embedding_params),
                    std::to_string(static_cast<long long>(r->step.back())), format_si(r->tokens.back()),
                    format_number(r->final_lm_loss()), format_number(r->final_val_loss()),
                    r->deco ? format_number(r->final_activation_ratio()) : "-",
                    format_number(std::round(r->mean_tokens_per_second()))});
  std::vector<size_t> width(rows[0].size(), 0);
  for (const auto& row : rows)
    for (size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
  std::ostringstream out;
  for (const auto& row : rows) {
    for (size_t c = 0; c < row.size(); ++c) {
      const std::string pad(width[c] - row[c].size(), ' ');
      out << (c ? "  " : "") << (c < 2 ? row[c] + pad : pad + row[c]);  // names left, numbers right
    }
    out << "\n";
  }
  return out.str();
}

std::string html_report(const std::vector<RunHistory>& runs) {
  std::ostringstream html;
  const RunHistory& main = runs.front();
  const bool compare = runs.size() > 1;
  char when[64];
  const std::time_t now = std::time(nullptr);
  std::strftime(when, sizeof(when), "%Y-%m-%d %H:%M UTC", std::gmtime(&now));

  html << "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
       << "<title>deco report: " << xml_escape(main.name) << "</title>\n<style>" << kStyle << "</style>\n"
       << "</head>\n<body>\n<h1>deco report: " << xml_escape(main.name) << "</h1>\n"
       << "<p class=\"meta\">" << xml_escape(main.dir) << " | " << xml_escape(model_summary(main)) << " | generated "
       << when << " by deco " << DECO_VERSION << "</p>\n"
       << "<nav><a href=\"#summary\">summary</a><a href=\"#loss\">loss</a><a href=\"#sparsity\">sparsity</a>"
       << "<a href=\"#throughput\">throughput</a>" << (compare ? "<a href=\"#scaling\">scaling</a>" : "")
       << "</nav>\n<h2 id=\"summary\">Summary</h2>\n";
  summary_table(html, runs);

  // Loss against tokens: train lines, validation points.
  std::string note;
  LineChart loss = chart("loss", "Loss vs tokens", "tokens", "cross-entropy", true);
  for (size_t i = 0; i < runs.size(); ++i) {
    const auto& r = runs[i];
    loss.series.push_back(step_series(run_label(r) + " train", palette_color(i), r.tokens, r.lm_loss, &note));
    if (!r.val_loss.empty()) {
      Series v;
      v.label = run_label(r) + " val";
      v.color = palette_color(i);
      v.x = r.val_tokens;
      v.y = r.val_loss;
      v.dashed = true;
      v.markers = true;
      loss.series.push_back(std::move(v));
    }
  }
  html << "<h2 id=\"loss\">Loss</h2>\n";
  figure(html, render(loss), "Training loss (lines) and validation loss (dots) against consumed tokens" +
                                 (note.empty() ? std::string(".") : "; " + note + "."));

  LineChart lr = chart("lr", "Learning rate", "step", "learning rate");
  for (size_t i = 0; i < runs.size(); ++i)
    lr.series.push_back(step_series(run_label(runs[i]), palette_color(i), runs[i].step, runs[i].lr));
  figure(html, render(lr), "");

  // Sparsity.
  html << "<h2 id=\"sparsity\">Sparsity</h2>\n";
  LineChart ratio = chart("activation-ratio", "Routed-expert activation ratio", "tokens", "activation ratio", true);
  std::set<double> targets;
  for (size_t i = 0; i < runs.size(); ++i) {
    if (!runs[i].deco) continue;
    ratio.series.push_back(
        step_series(run_label(runs[i]), palette_color(i), runs[i].tokens, runs[i].activation_ratio));
    targets.insert(runs[i].config.sparsity.target_ratio);
  }
  for (double t : targets) ratio.hlines.push_back({t, "target " + format_number(t), "#c00000"});
  figure(html, render(ratio), ratio.series.empty() ? "No run has DECO layers (dense models route nothing)."
                                                   : "Active (token, routed expert) pairs over all pairs, over "
                                                     "every DECO layer, with the target of sparsity.target_ratio.");
  for (const auto& r : runs) deco_heatmaps(html, r);

  // Throughput.
  html << "<h2 id=\"throughput\">Throughput</h2>\n";
  LineChart tps = chart("tokens-per-second", "Tokens per second", "step", "tokens/s");
  for (size_t i = 0; i < runs.size(); ++i)
    tps.series.push_back(
        step_series(run_label(runs[i]), palette_color(i), runs[i].step, runs[i].tokens_per_second));
  figure(html, render(tps), "Training tokens per second of each step (the global batch over the step's time).");

  if (compare) scaling_section(html, runs);
  html << "</body>\n</html>\n";
  return html.str();
}

}  // namespace deco::report

// deco report: the HTML report of a run directory (report/html_report.h).
#include <iostream>

#include "cli/commands.h"
#include "core/file_io.h"
#include "report/html_report.h"
#include "report/run_history.h"

namespace deco::cli {

int report(const ReportArgs& args) {
  std::vector<report::RunHistory> runs;
  runs.push_back(report::load_run(args.run_dir));
  for (const auto& other : args.compare) runs.push_back(report::load_run(other));
  const std::string out = args.out.empty() ? args.run_dir + "/report.html" : args.out;
  check_output_path(out);
  const std::string html = report::html_report(runs);
  write_file_atomic(out, html);
  std::cout << report::text_summary(runs);
  std::cout << "wrote " << out << " (" << runs.size() << (runs.size() == 1 ? " run, " : " runs, ") << html.size() / 1024
            << " KiB)" << std::endl;
  return 0;
}

}  // namespace deco::cli

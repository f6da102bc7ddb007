#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cstdio>

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // a run cut short by a timeout keeps the lines it printed
  // catch_discover_tests registers every case with CTest through CMake
  // lists, where a ';' splits a name: such a case would silently never run
  // under scripts/test.sh.
  for (const Catch::TestCase& test : Catch::getRegistryHub().getTestCaseRegistry().getAllTests())
    if (test.name.find(';') != std::string::npos) {
      std::fprintf(stderr, "deco_tests: the test name \"%s\" contains ';', which CTest cannot register; rename it.\n",
                   test.name.c_str());
      return 2;
    }
  return Catch::Session().run(argc, argv);
}

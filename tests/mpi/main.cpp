// The MPI tests' main: every rank runs every test case in the same order
// (each case's collectives must be matched by the other ranks). MPI starts
// first, with a short watchdog, so that a test whose ranks disagree ends
// with the watchdog's message instead of hanging until CTest's timeout.
// Without mpirun the same cases run on the single-process groups.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include "parallel/mpi_runtime.h"

int main(int argc, char** argv) {
  deco::mpi_init(deco::detect_launch());
  deco::set_collective_timeout(60);
  return Catch::Session().run(argc, argv);
}

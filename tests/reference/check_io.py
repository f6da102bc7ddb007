#!/usr/bin/env python3
"""Independent readers and writers for deco's file formats, driven by the [io] unit tests.

The C++ tests run this with /usr/bin/python3 (NumPy and h5py) to prove that
NumPy writes .npy files deco reads, that NumPy reads the .npy files deco
writes, and that h5py reads deco's HDF5 weights files. Output is plain
text that the tests parse; floats are printed with repr(), which round-trips
exactly.

  check_io.py write-npy DIR      write NumPy-made .npy files (see write_npy) into DIR
  check_io.py load-npy FILE      print descr, shape, fortran_order and the values of FILE
  check_io.py h5-summary FILE    print root attributes and every dataset of FILE
  check_io.py h5-delete FILE P   delete dataset P (e.g. /model/lm_head.weight) from FILE
"""
import sys

import numpy as np


def write_npy(out_dir):
    # The C++ test recomputes these same values; keep the two in step.
    np.save(f"{out_dir}/i4_2d.npy", np.arange(12, dtype="<i4").reshape(3, 4) * 3 - 7)
    np.save(f"{out_dir}/i8_1d.npy", np.array([-(2**40), 0, 2**40 + 5], dtype="<i8"))
    np.save(f"{out_dir}/f4_3d.npy", np.arange(24, dtype="<f4").reshape(2, 3, 4) * 0.5 - 1.25)
    np.save(f"{out_dir}/u2_tokens.npy", np.arange(10, dtype="<u2").reshape(2, 5))
    np.save(f"{out_dir}/f8_0d.npy", np.float64(2.5))
    np.save(f"{out_dir}/fortran.npy", np.asfortranarray(np.arange(12, dtype="<i4").reshape(3, 4)))
    np.save(f"{out_dir}/big_endian.npy", np.arange(6, dtype=">i4").reshape(2, 3))
    np.save(f"{out_dir}/float_tokens.npy", np.zeros((2, 5), dtype="<f4"))
    np.save(f"{out_dir}/objects.npy", np.array([1, "a"], dtype=object), allow_pickle=True)
    with open(f"{out_dir}/v2.npy", "wb") as f:
        np.lib.format.write_array(f, np.arange(6, dtype="<i8").reshape(3, 2), version=(2, 0))
    with open(f"{out_dir}/v3.npy", "wb") as f:
        np.lib.format.write_array(f, np.arange(4, dtype="<i4"), version=(3, 0))
    np.savez(f"{out_dir}/archive.npz", a=np.arange(3))


def load_npy(path):
    a = np.load(path)
    print(a.dtype.str)
    print(",".join(str(d) for d in a.shape))
    print(bool(np.isfortran(a)) and a.ndim > 1)
    print(" ".join(repr(v) for v in np.ravel(a).tolist()))


def h5_summary(path):
    import h5py

    with h5py.File(path, "r") as f:
        for key in sorted(f.attrs):
            value = f.attrs[key]
            if isinstance(value, bytes):
                value = value.decode()
            print(f"attr {key} {type(value).__name__} {value}")

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                a = obj[()]
                flat = np.ravel(a)
                print(
                    f"dataset /{name} {a.dtype.str} {','.join(str(d) for d in a.shape)} "
                    f"{np.sum(a, dtype=np.float64)!r} {float(flat[0])!r} {float(flat[-1])!r}"
                )

        f.visititems(visit)


def h5_delete(path, dataset):
    import h5py

    with h5py.File(path, "r+") as f:
        del f[dataset]


def main(argv):
    commands = {"write-npy": (write_npy, 1), "load-npy": (load_npy, 1),
                "h5-summary": (h5_summary, 1), "h5-delete": (h5_delete, 2)}
    if len(argv) < 2 or argv[1] not in commands or len(argv) - 2 != commands[argv[1]][1]:
        sys.exit(__doc__)
    fn, _ = commands[argv[1]]
    fn(*argv[2:])


if __name__ == "__main__":
    main(sys.argv)

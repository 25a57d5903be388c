// An empty Python module, so `import mixemb._C` loads the shared library and runs its
// TORCH_LIBRARY registrations. Only the Python build (setup.py) compiles this file; the
// CMake build for C++ serving links the same op sources without Python.
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "mixemb's compiled ops (registered as torch.ops.mixemb.*)",
      -1, nullptr};
  return PyModule_Create(&module_def);
}
}

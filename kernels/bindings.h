// Each part of the C++ core registers its Python bindings here; bindings.cpp assembles the module.
#pragma once
#include <pybind11/pybind11.h>

namespace numatune {
void register_system(pybind11::module_& m);
void register_membench(pybind11::module_& m);
void register_quant(pybind11::module_& m);
void register_engine(pybind11::module_& m);
}  // namespace numatune

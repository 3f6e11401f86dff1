"""Files to arrays: units, and the model, regimen, population and PD files read and
validated into typed objects and the arrays the kernels take."""

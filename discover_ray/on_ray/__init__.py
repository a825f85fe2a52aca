"""Everything that runs on Ray besides training: the Ray executor of the pipeline, joining a cluster, and
submitting dissections as Ray jobs. With ``discover_ray.training`` the only part of the library that imports Ray."""

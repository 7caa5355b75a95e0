"""placeholder"""
def tracing_options(model):
    return {}
def sync_config(model):
    pass

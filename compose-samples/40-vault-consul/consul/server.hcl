server = true
ui_config { enabled = true }
client_addr = "0.0.0.0"
data_dir = "/consul/data"

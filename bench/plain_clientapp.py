"""The comparison point of bench/deploy_overhead.py: a plain Flower ClientApp that, as Flower
1.42 runs it, imports torch and peft and loads the model and the silo for every message.
Shipped inside the benchmark's own app folder; not part of fedsilo."""

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

app = ClientApp()


def handle(msg: Message, context: Context) -> Message:
    from client.app import site_reply  # torch, transformers, peft: imported per message
    from common.config import load_config

    cfg = load_config(str(context.node_config["fedsilo-config"]))
    content = site_reply(cfg, msg.metadata.message_type, msg.content, context)
    return Message(content=content, reply_to=msg)


app.train()(handle)
app.evaluate()(handle)
app.query()(handle)

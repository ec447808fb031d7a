"""The main process's fast way to reply: ``ReplyBatcher`` puts replies on ``response_q``, several
to a message whenever they come faster than one message at a time can be written."""

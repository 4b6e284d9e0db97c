
­ª‡ERROR*
tool failed2 
exception.type
TimeoutError2/
exception.message
read timed out after 30sJR	JR